"""Keeps a CPU-only host quiet when ``libtpu`` is installed (the ``tpu`` extra).

JAX starts every platform it finds when ``JAX_PLATFORMS`` is unset; libtpu then probes for TPU
chips and workers and prints start-up errors on a machine that has none. The ``latentlm`` command
names the CPU platform itself when no accelerator is attached, before JAX is imported; TPU hosts
(``/dev/accel*``, VFIO groups, Google TPU PCI devices), GPU hosts and an explicit
``JAX_PLATFORMS`` are left alone.
"""

from __future__ import annotations

import glob
import os
import pathlib
from collections.abc import MutableMapping

_GOOGLE_PCI_VENDOR = "0x1ae0"
_GPU_DEVICES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def tpu_attached() -> bool:
    """TPU chips on this host: accel devices (v2–v4, v5e), VFIO groups (v5p, v6e) or PCI ids."""
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return True
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            if pathlib.Path(vendor).read_text().strip() == _GOOGLE_PCI_VENDOR:
                return True
        except OSError:
            continue
    return False


def gpu_attached() -> bool:
    return any(os.path.exists(d) for d in _GPU_DEVICES)


def default_to_cpu_without_accelerator(environ: MutableMapping[str, str] | None = None
                                       ) -> bool:
    """Sets ``JAX_PLATFORMS=cpu`` when it is unset and no TPU or GPU is attached; returns
    whether it did."""
    environ = os.environ if environ is None else environ
    if "JAX_PLATFORMS" in environ or tpu_attached() or gpu_attached():
        return False
    environ["JAX_PLATFORMS"] = "cpu"
    return True
