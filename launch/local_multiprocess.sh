#!/usr/bin/env bash
# N JAX processes of one run on this machine, the way the tests simulate a pod: each
# process gets DEVICES/N forced CPU devices and the three JAX_* variables that
# c3_jax.parallel.maybe_initialize_distributed reads; the coordinator and the CPU
# collectives listen on 127.0.0.1 only.
#
#   launch/local_multiprocess.sh N --config=configs/X.py[:variant] --workdir=DIR [--config.f=v ...]
#
# Environment: DEVICES (CPU devices in all, default 8; N must divide it), PORT
# (coordinator port, default a free one), LOG_DIR (default logs/local_multiprocess/<time>),
# PYTHON (default .venv/bin/python of this checkout, else python3), GRACE (seconds between
# SIGTERM and SIGKILL when stopping the others, default 10).
# Exits non-zero if any process fails; the others are then stopped.
set -euo pipefail

usage() {
  echo "usage: $0 N --config=configs/X.py[:variant] --workdir=DIR [--config.field=value ...]" >&2
  exit 2
}
[[ $# -ge 1 && $1 =~ ^[1-9][0-9]*$ ]] || usage
n=$1
shift

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
devices=${DEVICES:-8}
if (( devices % n )); then
  echo "DEVICES=$devices is not a multiple of N=$n" >&2
  exit 2
fi
python=${PYTHON:-}
if [[ -z $python ]]; then
  if [[ -x $root/.venv/bin/python ]]; then python=$root/.venv/bin/python; else python=python3; fi
fi
port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
log_dir=${LOG_DIR:-logs/local_multiprocess/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$log_dir"

declare -A index=()  # pid -> process id, for the processes still running
stop_all() {  # TERM, then KILL after GRACE seconds (JAX's runtime catches SIGTERM)
  local pid alive t
  for pid in "${!index[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for ((t = 0; t < ${GRACE:-10}; t++)); do
    alive=0
    for pid in "${!index[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    if ((alive == 0)); then return 0; fi
    sleep 1
  done
  for pid in "${!index[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT TERM

echo "$n processes x $((devices / n)) CPU devices, coordinator 127.0.0.1:$port, logs in $log_dir"
for ((i = 0; i < n; i++)); do
  JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=$n JAX_PROCESS_ID=$i \
    JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$((devices / n)) ${XLA_FLAGS:-}" \
    PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" \
    "$python" -m c3_jax.main "$@" >"$log_dir/process_$i.log" 2>&1 &
  index[$!]=$i
done

status=0
while ((${#index[@]})); do
  finished=
  code=0
  wait -n -p finished "${!index[@]}" || code=$?
  if [[ -z $finished ]]; then  # wait itself failed
    status=${code:-1}
    stop_all
    break
  fi
  i=${index[$finished]}
  unset "index[$finished]"
  if ((code)); then
    echo "process $i failed (exit $code); stopping the others. The end of $log_dir/process_$i.log:" >&2
    tail -n 30 "$log_dir/process_$i.log" >&2
    status=$code
    stop_all
    wait || true
    break
  fi
  echo "process $i finished"
done
if ((status == 0)); then
  echo "all $n processes finished; logs in $log_dir"
fi
exit "$status"
