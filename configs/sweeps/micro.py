"""A 2-point sweep of the tiny text LM on the built-in captions: seconds per point on a CPU.

The end-to-end check of `latentlm sweep` (tests/test_sweep.py):

    latentlm sweep --config configs/sweeps/micro.py --workdir runs/sweep_micro
"""

from latentlm_jax.config.sweep import sweep_config


def get_config():
    s = sweep_config()
    s.name = "micro"
    s.base = "configs/lm_tiny.py"
    s.sizes = {
        "xs": {"model": {"num_layers": 1, "emb_dim": 32, "num_heads": 2, "num_kv_heads": 1,
                         "head_dim": 16, "mlp_dim": 64}},
        "s": {"model": {"num_layers": 2, "emb_dim": 64, "num_heads": 4, "num_kv_heads": 2,
                        "head_dim": 16, "mlp_dim": 128}},
    }
    s.overrides = {
        "data": {"seq_len": 64, "eval_examples": 32},
        "train": {"global_batch_size": 4, "num_steps": 24, "warmup_steps": 2, "log_every": 2,
                  "eval_every": 6},
        "checkpoint": {"every_steps": 12, "async_save": False},
        "metrics": {"peak_tflops_per_device": 1.0},  # no MFU calibration: MFU is not the point
        "mesh": {"ici": {"data": 1}},
    }
    # Two points: L(C) is fitted on the frontier of their eval curves (4 evals each).
    s.fit.frontier = "curves"
    s.fit.bootstrap = 50
    return s
