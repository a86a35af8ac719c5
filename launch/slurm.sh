#!/usr/bin/env bash
# One c3_jax run over the GPU nodes of a SLURM job: one task (one JAX process) per node,
# each using all GPUs of its node. JAX detects the job from SLURM's variables
# (coordinator = first node, process id = SLURM_PROCID); c3_jax.parallel starts it
# when SLURM_NTASKS > 1.
#
#   sbatch --nodes=4 launch/slurm.sh --config=configs/coco_caption.py:c3 --workdir=/shared/runs/c3
#
# Run it from the repository root on a filesystem every node sees; --workdir must be
# shared too (all processes write their checkpoint shards there; process 0 writes
# metrics.jsonl, results.json and figures). Environment: PYTHON (default
# .venv/bin/python), LOG_DIR (per-task logs, default logs/slurm-<job id>).
#
#SBATCH --job-name=c3-jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail

if [[ $# -eq 0 ]]; then
  echo "usage: sbatch [--nodes=N] $0 --config=configs/X.py[:variant] --workdir=SHARED_DIR [...]" >&2
  exit 2
fi
cd "${SLURM_SUBMIT_DIR:-.}"
python=${PYTHON:-.venv/bin/python}
log_dir=${LOG_DIR:-logs/slurm-${SLURM_JOB_ID:-local}}
mkdir -p "$log_dir"

# JAX's SLURM detection would give each task one GPU (that of its SLURM_LOCALID); with
# one task per node, every task uses all GPUs of its node instead.
gpus=${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}
if ((gpus > 0)); then
  JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((gpus - 1)))
  export JAX_LOCAL_DEVICE_IDS
fi
echo "job ${SLURM_JOB_ID:-?}: ${SLURM_NNODES:-1} node(s) x ${gpus} GPU(s); logs in $log_dir"

srun --kill-on-bad-exit=1 --ntasks-per-node=1 --output="$log_dir/task_%t.log" \
  "$python" -m c3_jax.main "$@"
