#!/usr/bin/env bash
# Run `jaxrl-lm train` on every worker of a Cloud TPU VM pod slice at once
# (the `--worker=all` pattern): one JAX process per host, which
# jax.distributed.initialize() discovers from the TPU metadata.
#
#   launch/tpu_pod.sh my-tpu us-central2-b --config launch/configs/tiny.yaml --out gs-or-nfs/runs/x
#
# Assumes this repository and its .venv exist at $REPO_DIR (default
# ~/jaxrl_lm) on every worker (e.g. `--worker=all --command "git clone ... && make"`),
# and that --out is on storage all workers share (NFS or a GCS FUSE mount).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 TPU_NAME ZONE [jaxrl-lm train arguments...]" >&2
  exit 2
fi
tpu=$1
zone=$2
shift 2
repo=${REPO_DIR:-'~/jaxrl_lm'}
args=$(printf '%q ' "$@")

gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all \
  --command "cd $repo && JAXRL_LM_DISTRIBUTED=1 .venv/bin/jaxrl-lm train $args"
