"""Multi-host start-up: ``jax.distributed.initialize`` for TPU pods, SLURM GPU clusters and a local
multi-process CPU mode (gloo collectives) used for testing.

Values come from ``config.distributed`` or, when empty there, from the environment variables
``LATENTLM_COORDINATOR``, ``LATENTLM_NUM_PROCESSES`` and ``LATENTLM_PROCESS_ID`` that
``launch/local_cpu.sh`` sets. On TPU pods and under SLURM JAX discovers everything itself.
"""

from __future__ import annotations

import os

import jax
import ml_collections as mlc

_initialized = False


def _on_managed_cluster() -> bool:
    return any(k in os.environ for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                                         "MEGASCALE_COORDINATOR_ADDRESS"))


def initialize(config: mlc.ConfigDict) -> None:
    """Initialises jax.distributed once when more than one process is involved."""
    global _initialized
    if _initialized:
        return
    d = config.distributed
    address = d.coordinator_address or os.environ.get("LATENTLM_COORDINATOR", "")
    num = d.num_processes or int(os.environ.get("LATENTLM_NUM_PROCESSES", "0"))
    pid = d.process_id if d.process_id >= 0 else int(os.environ.get("LATENTLM_PROCESS_ID", "-1"))
    if address and num > 1:
        if d.cpu_collectives and jax.config.jax_platforms in (None, "", "cpu"):
            jax.config.update("jax_cpu_collectives_implementation", d.cpu_collectives)
        jax.distributed.initialize(coordinator_address=address, num_processes=num,
                                   process_id=pid)
        _initialized = True
    elif _on_managed_cluster():
        jax.distributed.initialize()
        _initialized = True
