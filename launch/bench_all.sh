#!/usr/bin/env bash
# Run the speed benchmarks one after another, each as JSON into OUT_DIR, with a
# time limit per bench so one slow side cannot eat the others' time. Works on any
# JAX backend (CPU, GPU, TPU): each bench names the backend it ran on.
#
#   launch/bench_all.sh OUT_DIR [BENCH ...]     # default: rollout sampler envs
#
# Variables: PYTHON (default: .venv/bin/python if present, else python3),
# LIMIT_S (seconds per bench, default 600). A bench that fails or runs out of
# time leaves its stderr in OUT_DIR/NAME.err and the others still run.
set -u
out=${1:?usage: launch/bench_all.sh OUT_DIR [BENCH ...]}
shift
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(rollout sampler envs)
cd "$(dirname "$0")/.."
py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
declare -A flags=(
  [rollout]="--settings main,full"
  [rollout-large]="--settings main --batches 1024"
  [sampler]=""
  [envs]=""
  [envs-large]="--batch 4096,65536 --every-batch"
  [grpo-step]=""
  [data-grpo]=""
)
for name in "${benches[@]}"; do
  if [ -z "${flags[$name]+x}" ]; then
    echo "bench_all: unknown bench '$name' (allowed: ${!flags[*]})" >&2
    exit 2
  fi
done
mkdir -p "$out"
status=0
for name in "${benches[@]}"; do
  bench=${name%-large}  # NAME-large: the same bench at accelerator-sized batches
  t0=$(date +%s)
  timeout "${LIMIT_S:-600}" "$py" -m jaxrl_lm.cli bench "$bench" ${flags[$name]} --json \
    >"$out/$name.json" 2>"$out/$name.err"
  rc=$?
  echo "$name: exit $rc after $(( $(date +%s) - t0 )) s -> $out/$name.json"
  [ $rc -eq 0 ] || status=1
done
exit $status
