"""``latentlm describe --config C``: a config's parameters and training FLOPs, without compiling.

    latentlm describe --config configs/latentlm.py:7b
    latentlm describe --config configs/latentlm.py:d4w128 --config.train.num_steps=2000

Parameters are counted on the model the task builds, abstractly (``nnx.eval_shape``: shapes, no
memory), per top-level module; a language model's are grouped into the backbone (the decoder
blocks and final norm), the diffusion heads (one per latent modality) and the embeddings (token
embedding, output projection, latent input projections). FLOPs are the task's model FLOPs
(forward + backward, what MFU counts; ``latentlm_jax/train/flops.py``), the diffusion heads
included with their K = ``model.diffusion.batch_mul`` draws per latent slot.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import ml_collections as mlc

from latentlm_jax.cli.common import add_config_argument, load_config, quiet_logs

# A language model's top-level modules (models/transformer.py, models/latentlm.py) → group.
LM_GROUPS = {"decoder": "backbone (decoder blocks)", "heads": "diffusion heads",
             "embed": "embeddings", "lm_head": "embeddings", "latent_in": "embeddings"}
LM_PARTS = {"decoder": "decoder blocks + final norm", "embed": "token embedding",
            "lm_head": "output projection", "latent_in": "latent input projections"}
LM_ORDER = ("backbone (decoder blocks)", "diffusion heads", "embeddings")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)


def _count(tree: Any) -> int:
    import jax

    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def parameter_counts(config: mlc.ConfigDict) -> dict[str, Any]:
    """``{"modules": {top-level module: count}, "groups": {group: {part: count}}, "total"}`` of
    the model ``config``'s task builds, counted on abstract shapes."""
    from flax import nnx

    from latentlm_jax.train.tasks import get_task

    task = get_task(config)
    model = nnx.eval_shape(lambda: task.build_model(config, nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    modules = {name: _count(sub) for name, sub in params.items()}
    groups: dict[str, dict[str, int]] = {}
    for name, sub in params.items():
        group = LM_GROUPS.get(name, name) if config.task == "lm" else name
        if name == "heads" and config.task == "lm":  # one head per modality
            parts = {f"{modality} head": _count(head) for modality, head in sub.items()}
        else:
            parts = {LM_PARTS.get(name, name) if config.task == "lm" else name: modules[name]}
        groups.setdefault(group, {}).update(parts)
    if config.task == "lm":
        groups = dict(sorted(groups.items(), key=lambda kv: (
            LM_ORDER.index(kv[0]) if kv[0] in LM_ORDER else len(LM_ORDER), kv[0])))
    return {"modules": modules, "groups": groups, "total": sum(modules.values())}


def flops_summary(config: mlc.ConfigDict) -> dict[str, Any] | None:
    """Model FLOPs per step and per item (token / example), the run's total when
    ``train.num_steps`` is set, and for a language model the split into backbone + LM head and
    latent projections + diffusion heads; None when the task counts no FLOPs."""
    from latentlm_jax.train.tasks import get_task

    task = get_task(config)
    if not hasattr(task, "flops_per_step"):
        return None
    per_step = float(task.flops_per_step(config))
    unit, items = task.items_per_step(config)
    out = {"per_step": per_step, "unit": unit, "items_per_step": items,
           "per_item": per_step / items,
           "total": per_step * config.train.num_steps if config.train.num_steps else None}
    if config.task == "lm":
        from latentlm_jax.train.flops import head_slots_per_row, transformer_flops_per_token

        seq_len = config.data.seq_len
        out["backbone_per_token"] = transformer_flops_per_token(config.model, seq_len)
        out["latent_per_token"] = out["per_item"] - out["backbone_per_token"]
        out["head_slots_per_row"] = head_slots_per_row(config.model, seq_len)
    return out


def _n(count: float) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            return f"{count / scale:.2f}{suffix}"
    return f"{count:.0f}"


def _shape_line(config: mlc.ConfigDict) -> str:
    if config.task != "lm":
        return f"{config.name}: task {config.task}"
    from latentlm_jax.modality import MODALITY_NAMES, latent_dims

    m = config.model
    line = (f"{config.name}: {m.num_layers} layers × {m.emb_dim} wide, {m.num_heads} attention "
            f"heads of {m.head_dim} ({m.num_kv_heads} key/value), SwiGLU {m.mlp_dim}, vocabulary "
            f"{m.vocab_size}")
    dims = latent_dims(m)
    if dims:
        w = m.head.width or m.emb_dim
        latents = ", ".join(f"{MODALITY_NAMES[k]} {d}" for k, d in dims.items())
        hidden = max(1, round(w * m.head.mlp_ratio))
        line += (f"; diffusion heads {m.head.depth} × {w} (SwiGLU {hidden}) on latents of dim "
                 f"{latents}")
    return line


def print_description(config: mlc.ConfigDict) -> None:
    print(_shape_line(config))
    counts = parameter_counts(config)
    print("parameters")
    for group, parts in counts["groups"].items():
        total = sum(parts.values())
        print(f"  {group:<32}{total:>16,}  {_n(total):>8}")
        if len(parts) > 1:
            for part, n in parts.items():
                print(f"    {part:<30}{n:>16,}")
    print(f"  {'total':<32}{counts['total']:>16,}  {_n(counts['total']):>8}")
    flops = flops_summary(config)
    if flops is None:
        print(f"training FLOPs: task {config.task!r} does not count them")
        return
    unit = flops["unit"].rstrip("s")
    print("training FLOPs (forward + backward, as MFU counts them)")
    print(f"  per {unit:<28}{flops['per_item']:>16.4g}")
    if "backbone_per_token" in flops:
        print(f"    {'backbone + LM head':<30}{flops['backbone_per_token']:>16.4g}")
        if flops["latent_per_token"]:
            m = config.model
            print(f"    {'latent projections + heads':<30}{flops['latent_per_token']:>16.4g}  "
                  f"(K = {m.diffusion.batch_mul} draws per latent on "
                  f"{flops['head_slots_per_row']} slots per row per modality)")
    rows = (f"  ({config.train.global_batch_size} rows × {config.data.seq_len})"
            if flops["unit"] == "tokens" else "")
    print(f"  {flops['unit'] + ' per step':<30}{flops['items_per_step']:>18,.0f}{rows}")
    print(f"  {'per step':<30}{flops['per_step']:>18.4g}")
    if flops["total"] is not None:
        print(f"  {'whole run':<30}{flops['total']:>18.4g}  "
              f"(train.num_steps = {config.train.num_steps:,})")


def run(args: argparse.Namespace) -> int:
    quiet_logs()
    config = load_config(args)
    if config.task == "lm" and config.data.latents_dir:  # latent dims from the folder, as train
        from latentlm_jax.data.latents_dir import resolve_latents_dir

        resolve_latents_dir(config)
    print_description(config)
    return 0
