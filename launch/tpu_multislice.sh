#!/usr/bin/env bash
# launch/tpu_pod.sh for a multi-slice job: a queued resource of N TPU slices joined over the
# data-centre network (DCN). Every worker of every slice gets the same code and command; the run's
# mesh gets `--config.mesh.dcn.data=N` (data parallelism across slices, FSDP/tensor within one), so
# the only traffic between slices is the gradient all-reduce. JAX reads the MEGASCALE_* variables
# the TPU runtime sets on each host; nothing else is needed.
#
#   gcloud compute tpus queued-resources create my-qr --zone us-east5-a \
#       --accelerator-type v5p-256 --runtime-version v2-alpha-tpuv5 --node-count 2 --node-prefix my-qr
#   launch/tpu_multislice.sh setup my-qr 2 --zone us-east5-a
#   launch/tpu_multislice.sh run   my-qr 2 --zone us-east5-a -- train \
#       --config configs/latentlm.py:13b --workdir gs://BUCKET/runs/13b
set -euo pipefail
ACTION=${1:?setup, run or stop}; QR=${2:?queued resource name}; SLICES=${3:?number of slices}
shift 3
[[ "$SLICES" =~ ^[1-9][0-9]*$ ]] || { echo "tpu_multislice.sh: slices must be ≥ 1" >&2; exit 2; }
exec "$(dirname "$0")/tpu_pod.sh" "$ACTION" "$QR" --slices "$SLICES" "$@"
