#!/usr/bin/env bash
# Sets up every host of a Cloud TPU pod slice and runs the same `latentlm` command on all of them.
# JAX discovers the pod itself (jax.distributed.initialize with no arguments); nothing else is needed.
#
#   launch/tpu_pod.sh setup my-tpu --zone us-east5-a [--commit REF] [--repo URL]
#   launch/tpu_pod.sh run   my-tpu --zone us-east5-a -- train --config configs/latentlm.py:1b \
#       --workdir gs://BUCKET/runs/x
#   launch/tpu_pod.sh stop  my-tpu --zone us-east5-a      # ends `latentlm` on every host
#
# setup: the code at one commit (default HEAD of this checkout) goes to ~/latentlm_jax on every host
#   - copied as `git archive` of that commit (nothing uncommitted travels), or cloned from --repo URL
#   and checked out at it - and a venv is made there with the `tpu` extra (libtpu at jax's pin).
#   Each host records the commit in ~/latentlm_jax/COMMIT; `run` prints every host's and refuses to
#   start when they differ.
# run: starts the command on all hosts at once (gcloud --worker=all) and streams their output.
#
# Multi-slice jobs (queued resources, several slices joined over DCN): launch/tpu_multislice.sh.
# Environment: GCLOUD (default gcloud), LATENTLM_INSTALL (the install command run on each host).
set -euo pipefail

usage() { sed -n '2,20p' "$0" >&2; exit 2; }
ACTION=${1:-}; NAME=${2:-}
[[ -n "$ACTION" && -n "$NAME" ]] || usage
shift 2
ZONE=""; REF=HEAD; REPO=""; SLICES=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --zone) ZONE=$2; shift 2 ;;
    --commit) REF=$2; shift 2 ;;
    --repo) REPO=$2; shift 2 ;;
    --slices) SLICES=$2; shift 2 ;;  # set by tpu_multislice.sh: a queued resource of N slices
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1 (the latentlm command goes after --)" >&2; exit 2 ;;
  esac
done
[[ -n "$ZONE" ]] || { echo "tpu_pod.sh: --zone is required" >&2; exit 2; }
GCLOUD=${GCLOUD:-gcloud}
DIR='~/latentlm_jax'
INSTALL=${LATENTLM_INSTALL:-"python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[tpu]'"}

# One command on every host: a pod slice's workers, or every worker of every slice (node).
on_all_hosts() {
  if [[ "$SLICES" -gt 0 ]]; then
    "$GCLOUD" compute tpus queued-resources ssh "$NAME" --zone "$ZONE" --node=all --worker=all \
      --command "$1"
  else
    "$GCLOUD" compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$1"
  fi
}

copy_to_all_hosts() {
  if [[ "$SLICES" -gt 0 ]]; then
    "$GCLOUD" compute tpus queued-resources scp "$1" "$NAME:$2" --zone "$ZONE" --node=all \
      --worker=all
  else
    "$GCLOUD" compute tpus tpu-vm scp "$1" "$NAME:$2" --zone "$ZONE" --worker=all
  fi
}

case "$ACTION" in
  setup)
    cd "$(dirname "$0")/.."
    COMMIT=$(git rev-parse --verify "$REF^{commit}")
    echo "setting up $NAME at commit $COMMIT"
    if [[ -n "$REPO" ]]; then
      on_all_hosts "rm -rf $DIR && git clone -q $(printf %q "$REPO") $DIR && cd $DIR && \
git checkout -q $COMMIT && echo $COMMIT > COMMIT && $INSTALL"
    else
      ARCHIVE=$(mktemp -d)/latentlm_jax-$COMMIT.tar.gz
      git archive --format=tar.gz -o "$ARCHIVE" "$COMMIT"
      copy_to_all_hosts "$ARCHIVE" latentlm_jax.tar.gz
      on_all_hosts "rm -rf $DIR && mkdir -p $DIR && tar -xzf latentlm_jax.tar.gz -C $DIR && \
rm latentlm_jax.tar.gz && cd $DIR && echo $COMMIT > COMMIT && $INSTALL"
      rm -f "$ARCHIVE"
    fi
    echo "done: $NAME has latentlm_jax at $COMMIT in $DIR on every host"
    ;;
  run)
    [[ $# -gt 0 ]] || { echo "tpu_pod.sh: run needs a latentlm command after --" >&2; exit 2; }
    ARGS=("$@")
    if [[ "$SLICES" -gt 0 ]]; then ARGS+=("--config.mesh.dcn.data=$SLICES"); fi
    printf -v QUOTED '%q ' "${ARGS[@]}"
    # Every host must run the same code: compare the commits setup recorded before starting.
    COMMITS=$(on_all_hosts "cat $DIR/COMMIT" | sort -u)
    if [[ $(wc -l <<< "$COMMITS") -ne 1 || -z "$COMMITS" ]]; then
      echo "tpu_pod.sh: hosts hold different code (run setup again):" >&2
      echo "$COMMITS" >&2
      exit 2
    fi
    echo "running on every host of $NAME at commit $COMMITS: latentlm $QUOTED"
    on_all_hosts "cd $DIR && $DIR/.venv/bin/latentlm $QUOTED"
    ;;
  stop)
    # SIGTERM: the hosts agree on a step, save it and exit 0 (docs/preemption.md).
    on_all_hosts "pkill -TERM -f '[l]atentlm_jax/.venv/bin/latentlm' || true"
    ;;
  *) usage ;;
esac
