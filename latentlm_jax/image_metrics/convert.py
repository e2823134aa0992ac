"""One-off: pytorch-fid's Inception weights (``.pth``) → the ``.npz`` ``latentlm eval-images`` reads.

    pip install torch    # this step only; the framework itself never needs PyTorch
    curl -LO https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    python -m latentlm_jax.image_metrics.convert pt_inception-2015-12-05-6726825d.pth inception_fid.npz

The result is checked against the network (every array present, with its shape) before it is
written; the ``.pth``'s SHA-256 is printed and compared with the prefix in pytorch-fid's file name.
"""  # noqa: E501

from __future__ import annotations

import argparse
import hashlib
import sys

import numpy as np

from latentlm_jax import paths
from latentlm_jax.config.loading import ConfigError

PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_SHA256_PREFIX = "6726825d"


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """The state dict of a ``.pth`` as NumPy arrays (PyTorch imported here only)."""
    try:
        import torch
    except ImportError as exc:
        raise ConfigError("", "converting the weights needs PyTorch, for this one-off step "
                              "only: pip install torch") from exc
    if not paths.is_file(path):
        raise ConfigError("", f"no such file: {path}")
    with paths.open_file(path, "rb") as f:
        state = torch.load(f, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ConfigError("", f"{path} holds a {type(state).__name__}, not a state dict")
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def convert(src: str, dst: str) -> str:
    """Converts, checks and writes; returns the ``.pth``'s SHA-256."""
    from latentlm_jax.image_metrics.npz import write_npz
    from latentlm_jax.image_metrics.weights import (
        abstract_model,
        check_weight_arrays,
        convert_torch_state_dict,
        weight_shapes,
    )

    arrays = convert_torch_state_dict(read_torch_state_dict(src))
    shapes = weight_shapes(abstract_model())
    check_weight_arrays(arrays, shapes, src)
    write_npz(dst, arrays)
    return hashlib.sha256(paths.read_bytes(src)).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m latentlm_jax.image_metrics.convert",
        description="Convert pytorch-fid's Inception weights (.pth) to the .npz that "
                    "`latentlm eval-images --weights` reads (needs PyTorch: pip install torch).")
    parser.add_argument("src", help=f"pytorch-fid's {PYTORCH_FID_FILE}")
    parser.add_argument("dst", help="the .npz to write")
    args = parser.parse_args(argv)
    try:
        digest = convert(args.src, args.dst)
    except ConfigError as exc:
        print(f"convert: error: {exc}", file=sys.stderr)
        return 2
    match = ("matches pytorch-fid's" if digest.startswith(PYTORCH_FID_SHA256_PREFIX) else
             f"WARNING: does not start with {PYTORCH_FID_SHA256_PREFIX} as pytorch-fid's "
             f"{PYTORCH_FID_FILE} does: not the standard FID weights?")
    print(f"wrote {args.dst} from {args.src} (sha256 {digest[:16]}…, {match})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
