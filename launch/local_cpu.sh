#!/usr/bin/env bash
# Runs `latentlm ARGS...` as N local processes (one JAX process each, D host CPU devices each),
# joined by jax.distributed with gloo collectives: a multi-host run on one machine, for testing.
# XLA_FLAGS from the environment are kept; the device count is appended (the last one counts).
#
#   launch/local_cpu.sh 2 4 train --config configs/lm_tiny.py --workdir runs/mp \
#       --config.mesh.ici.data=-1
set -euo pipefail
N=${1:?number of processes}; D=${2:?devices per process}; shift 2
PORT=${LATENTLM_PORT:-$((20000 + RANDOM % 20000))}
# LATENTLM may be a command line, e.g. "python -m latentlm_jax.cli.main".
read -ra CMD <<< "${LATENTLM:-latentlm}"
pids=()
for ((i = 0; i < N; i++)); do
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$D" JAX_PLATFORMS=cpu \
  LATENTLM_COORDINATOR="127.0.0.1:$PORT" LATENTLM_NUM_PROCESSES="$N" LATENTLM_PROCESS_ID="$i" \
    "${CMD[@]}" "$@" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
