#!/usr/bin/env bash
# Run one command as N cooperating JAX processes on this machine (CPU, gloo
# collectives over loopback): a multi-host run you can debug on a laptop.
#
#   launch/local_multiprocess.sh 2 jaxrl-lm train --config launch/configs/tiny.yaml --out runs/mp
#
# Every process gets JAXRL_LM_COORDINATOR=127.0.0.1:PORT, JAXRL_LM_NUM_PROCESSES
# and JAXRL_LM_PROCESS_ID, which jaxrl_lm.train.mesh.maybe_initialize_distributed
# passes to jax.distributed.initialize. Set LOCAL_DEVICES to give each process
# several fake CPU devices. If one process fails, the others are stopped.
set -euo pipefail

if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES COMMAND [ARGS...]" >&2
  exit 2
fi
n=$1
shift
python=${PYTHON:-python3}
port=${JAXRL_LM_PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
local_devices=${LOCAL_DEVICES:-1}

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup INT TERM

for ((i = 0; i < n; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="--xla_force_host_platform_device_count=${local_devices}" \
  JAXRL_LM_COORDINATOR="127.0.0.1:${port}" \
  JAXRL_LM_NUM_PROCESSES="$n" \
  JAXRL_LM_PROCESS_ID="$i" \
    "$@" &
  pids+=("$!")
done

status=0
for ((k = 0; k < n; k++)); do
  if ! wait -n; then
    status=1
    cleanup
  fi
done
exit "$status"
