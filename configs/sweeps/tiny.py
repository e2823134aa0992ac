"""Four sizes of the demo's LatentLM (text, image and audio latents of the built-in data), the
same 300 steps × 32 × 128 tokens each: loss against training FLOPs on a 2-core CPU.

Needs the demo's σ-VAEs and latents in runs/demo (what configs/latentlm_tiny.py reads) and
held-out latents of the test split for the eval loss:

    make demo        # or: latentlm demo --workdir runs/demo  (σ-VAEs + runs/demo/latents)
    latentlm encode --vae-workdir runs/demo/vae_image --split test --num-examples 256 \
        --out runs/demo/latents_test
    latentlm encode --vae-workdir runs/demo/vae_audio --split test --num-examples 256 \
        --out runs/demo/latents_test
    latentlm sweep --config configs/sweeps/tiny.py --workdir runs/sweep_tiny

Sizes grow depth and width together (1 × 32 … 4 × 128, the last being latentlm_tiny's own
backbone), with 16-wide heads, grouped-query attention at 2 query heads per key/value head and a
SwiGLU 3 × the width; the diffusion heads are as wide as the model (head.width = 0), depth 3.
"""

from latentlm_jax.config.sweep import sweep_config


def size(layers: int, width: int) -> dict:
    heads = width // 16
    return {"model": {"num_layers": layers, "emb_dim": width, "num_heads": heads,
                      "num_kv_heads": heads // 2, "head_dim": 16, "mlp_dim": 3 * width}}


def get_config():
    s = sweep_config()
    s.name = "tiny"
    s.base = "configs/latentlm_tiny.py"
    s.sizes = {"xs": size(1, 32), "s": size(2, 64), "m": size(3, 96), "l": size(4, 128)}
    s.overrides = {
        "data": {"eval_latents_dir": "runs/demo/latents_test", "eval_examples": 256},
        "train": {"num_steps": 300, "warmup_steps": 30, "log_every": 20, "eval_every": 60,
                  # an EMA with no warm-up over 300 steps would still hold the initial weights
                  "ema_decay": 0.0},
        "checkpoint": {"every_steps": 150},
    }
    s.fit.frontier = "curves"  # 5 evals per size: the frontier of 20 (FLOPs, eval loss) points
    return s
