"""Held-out loss of a trained LatentLM on an encoded folder, after the fact:

    python -m latentlm_jax.lm.heldout_main LM_WORKDIR LATENTS_DIR [fresh|frozen] [EXAMPLES]

``LATENTS_DIR`` is a folder ``latentlm encode --split test --out DIR`` wrote with the run's σ-VAEs;
the rows, draws and noise treatment are those of the run's own ``train.eval_every`` evaluation
(:class:`~latentlm_jax.lm.evaluate.HeldOutEval`; docs/evaluation.md), on the checkpoint's raw
weights. Prints one JSON line: ``text_ce``, ``diffusion/<modality>``, ``loss``. How the demo's
``data.latent_noise`` default was chosen with it: docs/vae.md "Fresh noise".
"""

from __future__ import annotations

import json
import sys

from latentlm_jax.lm.evaluate import HeldOutEval
from latentlm_jax.lm.task import LMTask
from latentlm_jax.train.checkpoint_io import load_model


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    lm_dir, latents_dir = argv[0], argv[1]
    noise = argv[2] if len(argv) > 2 else "fresh"
    examples = int(argv[3]) if len(argv) > 3 else 512
    model, config, step = load_model(lm_dir)
    with config.unlocked():
        config.data.eval_latent_files = ()
        config.data.eval_latents_dir = latents_dir
        config.data.eval_examples = examples
        config.data.latent_noise = noise
    task = LMTask(config)
    evaluate = HeldOutEval(config, True, task.batch_logical_axes(config),
                           task.batch_dtypes(config))
    out = evaluate(model)
    print(json.dumps({"workdir": lm_dir, "step": step, "latent_noise": noise,
                      "rows": evaluate.num_rows,
                      **{k: round(float(v), 4) for k, v in out.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
