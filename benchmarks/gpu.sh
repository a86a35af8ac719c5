#!/usr/bin/env bash
# The GPU run in one command: the caption train step (bfloat16, batch sized for one
# H100/H200), greedy decoding, CLIP image embedding and a short run of the main job, each
# written as one JSON (throughput and MFU against the GPU's dense bfloat16 peak) into the
# output folder. About 5-8 minutes on one H100 once installed.
#
#   benchmarks/gpu.sh            # or: make bench-gpu
#   GPU_SH_SMOKE=1 benchmarks/gpu.sh   # the same commands at their smoke sizes, on any
#                                      # device, with .venv (no GPU needed, nothing installed)
#
# Refuses with exit status 2, before installing anything, when no GPU is visible
# (nvidia-smi -L lists none, or CUDA_VISIBLE_DEVICES hides them all).
#
# Environment:
#   OUT              output folder (default runs/gpu): <benchmark>.json per benchmark and gpu.log
#   C3_GPU_WORK      scratch folder for the main job's workdir (default runs/gpu-work)
#   C3_GPU_VENV      the virtual environment it installs into (default .venv-gpu)
#   C3_WHEELS        a folder of wheels: install offline from it (pip --no-index --find-links)
#   C3_JAX_SPEC      the JAX requirement (default jax[cuda12]==<jax pin in constraints.txt>);
#                    empty: take JAX as the base Python has it (see C3_GPU_SYSTEM_SITE)
#   C3_GPU_SYSTEM_SITE=1  create the venv with --system-site-packages
#   C3_PIP_ARGS      extra pip arguments (an index for torch's CPU build, say)
#   C3_GPU_PYTHON    a Python that already has everything: used as is, nothing installed
#   C3_GPU_TRAIN_BATCH / C3_GPU_DECODE_BATCH / C3_GPU_EMBED_BATCH   (defaults 256 each)
#   C3_GPU_MAIN_STEPS  captioner steps of the main job's quick variant (default 300)
#   C3_GPU_TIMEOUT   seconds allowed per benchmark (default 150); the main job's:
#                    C3_GPU_MAIN_TIMEOUT (default 240)
# Exits 1 if any benchmark failed (its JSON then holds the error), 0 otherwise.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

smoke=${GPU_SH_SMOKE:-0}
case "${1:-}" in
  --smoke) smoke=1 ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "error: unknown argument '$1' (usage: benchmarks/gpu.sh [--smoke|--help])" >&2; exit 2 ;;
esac

# The name of the first visible NVIDIA GPU, or nothing.
gpu_name() {
  case "${CUDA_VISIBLE_DEVICES-unset}" in ""|-1) return 0 ;; esac
  nvidia-smi -L 2>/dev/null | sed -n 's/^GPU [0-9]*: \(.*\) (UUID.*/\1/p' | head -n 1 || true
}

device=""
if [[ $smoke != 1 ]]; then
  device=$(gpu_name)
  if [[ -z $device ]]; then
    echo "error: no GPU visible (nvidia-smi -L lists none, or CUDA_VISIBLE_DEVICES hides" \
         "them); benchmarks/gpu.sh needs an NVIDIA GPU (GPU_SH_SMOKE=1 runs it at smoke size" \
         "on CPU)" >&2
    exit 2
  fi
  echo "GPU: $device"
fi

out=${OUT:-runs/gpu}
work=${C3_GPU_WORK:-runs/gpu-work}

# Installs the package, its test extras (the PyTorch references) and JAX for CUDA into the
# venv at the tested versions of constraints.txt, once (a stamp file marks it done).
install_venv() {
  local venv=$1 jax_pin spec stamp
  jax_pin=$(sed -n 's/^jax==//p' constraints.txt)
  spec=${C3_JAX_SPEC-"jax[cuda12]==$jax_pin"}
  stamp="$venv/c3-gpu-installed"
  [[ -f $stamp && $(cat "$stamp") == "$spec" ]] && return 0
  local venv_args=() src=() extra=()
  [[ ${C3_GPU_SYSTEM_SITE:-0} == 1 ]] && venv_args=(--system-site-packages)
  [[ -n ${C3_WHEELS:-} ]] && src=(--no-index --find-links "$C3_WHEELS")
  [[ -n $spec ]] && extra=("$spec")
  echo "installing into $venv: -e .[test] ${extra[*]} ${src[*]}"
  python3 -m venv "${venv_args[@]}" "$venv"
  # jax/jaxlib come from the spec; torch's pin there is a CPU build's local version.
  grep -vE '^(jax|jaxlib|torch)==' constraints.txt > "$venv/constraints-gpu.txt"
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install -q "${src[@]}" ${C3_PIP_ARGS:-} \
    -c "$venv/constraints-gpu.txt" -e '.[test]' "${extra[@]}"
  echo "$spec" > "$stamp"
}

if [[ -n ${C3_GPU_PYTHON:-} ]]; then
  py=$C3_GPU_PYTHON
elif [[ $smoke == 1 ]]; then
  py=.venv/bin/python
  [[ -x $py ]] || { echo "error: $py missing: run 'make install' first" >&2; exit 2; }
else
  install_venv "${C3_GPU_VENV:-.venv-gpu}"
  py=${C3_GPU_VENV:-.venv-gpu}/bin/python
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [[ $smoke != 1 ]]; then
  backend=$("$py" -c 'import jax; print(jax.default_backend())')
  if [[ $backend != gpu ]]; then
    echo "error: JAX in $py sees no GPU (backend: $backend); check the jax CUDA install" >&2
    exit 1
  fi
fi

mkdir -p "$out" "$work"
log="$out/gpu.log"
: > "$log"
report=(benchmarks/gpu/report.py --out "$out" --device "${device:-cpu}")
failed=0

# Runs one command under a time limit (seconds), its output on the console and in gpu.log,
# and writes its JSON through report.py (which records an error where the command failed).
run() {
  local name=$1 kind=$2 limit=$3 start rc=0 wall bench_log
  shift 3
  bench_log="$work/$name.log"
  echo "== $name: $*" | tee -a "$log"
  start=$(date +%s.%N)
  set +e
  timeout "$limit" "$@" 2>&1 | tee "$bench_log" | tee -a "$log"
  rc=${PIPESTATUS[0]}
  set -e
  wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
  echo "== $name: exit $rc after ${wall} s" | tee -a "$log"
  "$py" "${report[@]}" "$kind" "$name" "$bench_log" --returncode "$rc" --wall "$wall" \
    ${workdir:+--workdir "$workdir"} | tee -a "$log" || rc=1
  [[ $rc == 0 ]] || failed=1
}

if [[ $smoke == 1 ]]; then
  train=(--smoke --dtype bfloat16) decode=(--smoke) embed=(--smoke)
  main_args=(--config=configs/shapes_caption.py:quick)
else
  train=(--dtype bfloat16 --batch "${C3_GPU_TRAIN_BATCH:-256}" --steps 5 --warmup 2)
  decode=(--batch "${C3_GPU_DECODE_BATCH:-256}" --ref_captions 4 --tokens 20 --rounds 3)
  embed=(--batch "${C3_GPU_EMBED_BATCH:-256}" --seconds 10)
  main_args=(--config=configs/shapes_caption.py:quick
             "--config.captioner.max_steps=${C3_GPU_MAIN_STEPS:-300}")
fi

workdir=""
limit=${C3_GPU_TIMEOUT:-150}
run caption_train train "$limit" "$py" benchmarks/caption_train.py "${train[@]}"
run caption_decode decode "$limit" "$py" benchmarks/caption_decode.py "${decode[@]}"
run embed_throughput embed "$limit" "$py" benchmarks/embed_throughput.py "${embed[@]}"
workdir="$work/shapes_caption_quick-$(date +%Y%m%d-%H%M%S)"
if command -v java > /dev/null; then
  run main_quick main "${C3_GPU_MAIN_TIMEOUT:-240}" "$py" -m c3_jax.main "${main_args[@]}" \
    "--workdir=$workdir"
else  # the main job's caption metrics (pycocoevalcap) are Java programs
  why="no java on PATH (the main job's caption metrics need a Java runtime)"
  "$py" "${report[@]}" main main_quick - --skipped "$why" | tee -a "$log"
fi

echo "wrote $out/*.json and $out/gpu.log"
exit "$failed"
