#!/usr/bin/env bash
# Starts the same `latentlm` command on every host of a Cloud TPU pod slice. JAX discovers the pod
# (jax.distributed.initialize with no arguments), so nothing else is needed.
#
#   launch/tpu_pod.sh my-tpu us-east5-a train --config configs/lm_1b.py --workdir gs://B/runs/x
set -euo pipefail
TPU=${1:?TPU name}; ZONE=${2:?zone}; shift 2
printf -v ARGS '%q ' "$@"
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all \
  --command "cd ~/latentlm_jax && .venv/bin/latentlm $ARGS"
