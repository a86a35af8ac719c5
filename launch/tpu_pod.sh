#!/usr/bin/env bash
# One c3_jax run on a Cloud TPU VM slice: creates the slice (or reuses it), puts this
# repository on every worker, installs it with jax[tpu], runs the same
# `python -m c3_jax.main ARGS` on all workers (one JAX process each; C3_DISTRIBUTED=1
# makes jax.distributed.initialize() detect the slice), streams their logs, and copies
# the run's outputs (without checkpoints) and every worker's log back.
#
#   NAME=c3-pod ZONE=us-central2-b TYPE=v4-32 launch/tpu_pod.sh \
#     --config=configs/coco_caption.py:c3 --workdir=runs/coco_c3
#
# Required: NAME (TPU name), ZONE, TYPE (accelerator type, e.g. v4-8, v4-32, v5litepod-16).
# Optional:
#   PROJECT       gcloud project (default: gcloud's configured one)
#   VERSION       TPU runtime (default tpu-ubuntu2204-base; v5e/v5p/v6e use v2-alpha-tpuv5-lite,
#                 v2-alpha-tpuv5, v2-alpha-tpuv6e)
#   SPOT=1        create a Spot slice
#   REPO, REF     git URL to clone on the workers and the ref to check out (default: copy
#                 this checkout: HEAD plus uncommitted changes to tracked files)
#   REMOTE_DIR    checkout folder on the workers (default c3-jax, in the home directory)
#   SYNC          space-separated paths under the repository copied to every worker
#                 before the run, e.g. "data/coco_karpathy_clip checkpoints/gpt2"
#   RESULTS       local folder for the outputs (default runs/tpu/NAME)
#   DELETE=1      delete the slice afterwards
# On a multi-host slice (TYPE larger than one host, e.g. v4-16+) --workdir must be a
# folder every worker sees (an NFS/Filestore or gcsfuse mount, given as an absolute
# path): Orbax writes each worker's checkpoint shards there.
set -euo pipefail

: "${NAME:?set NAME (the TPU VM name)}" "${ZONE:?set ZONE}" "${TYPE:?set TYPE (e.g. v4-32)}"
if [[ $# -eq 0 ]]; then
  echo "usage: NAME=.. ZONE=.. TYPE=.. $0 --config=configs/X.py[:variant] --workdir=DIR [...]" >&2
  exit 2
fi
version=${VERSION:-tpu-ubuntu2204-base}
remote_dir=${REMOTE_DIR:-c3-jax}
results=${RESULTS:-runs/tpu/$NAME}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
gc=(--zone="$ZONE")
if [[ -n ${PROJECT:-} ]]; then gc+=(--project="$PROJECT"); fi

workdir=
prev=
for arg in "$@"; do
  case $arg in
    --workdir=*) workdir=${arg#--workdir=} ;;
    *) if [[ $prev == --workdir ]]; then workdir=$arg; fi ;;
  esac
  prev=$arg
done
if [[ -z $workdir ]]; then
  echo "pass --workdir=DIR (relative to the checkout on the workers, or an absolute shared path)" >&2
  exit 2
fi
if [[ $workdir == gs://* ]]; then
  echo "--workdir must be a filesystem path (mount the bucket with gcsfuse instead)" >&2
  exit 2
fi
remote_workdir=$workdir
if [[ $workdir != /* ]]; then remote_workdir=$remote_dir/$workdir; fi

on_all() { gcloud compute tpus tpu-vm ssh "$NAME" "${gc[@]}" --worker=all --command "$1"; }

# 1. The slice: reuse it if it exists (of the same type), else create it.
if state=$(gcloud compute tpus tpu-vm describe "$NAME" "${gc[@]}" --format='value(state)' 2>/dev/null); then
  have=$(gcloud compute tpus tpu-vm describe "$NAME" "${gc[@]}" --format='value(acceleratorType)')
  if [[ $have != "$TYPE" ]]; then
    echo "TPU $NAME exists as $have, not $TYPE; choose another NAME or delete it" >&2
    exit 1
  fi
  echo "reusing TPU $NAME ($have, $state)"
else
  echo "creating TPU $NAME ($TYPE, $version) in $ZONE"
  create=(--accelerator-type="$TYPE" --version="$version")
  if [[ ${SPOT:-0} == 1 ]]; then create+=(--spot); fi
  gcloud compute tpus tpu-vm create "$NAME" "${gc[@]}" "${create[@]}"
fi
workers=$(gcloud compute tpus tpu-vm describe "$NAME" "${gc[@]}" \
  --format='value(networkEndpoints[].ipAddress)' | tr ';' '\n' | grep -c . || true)
echo "$workers worker(s)"

# 2. The code on every worker.
if [[ -n ${REPO:-} ]]; then
  ref=${REF:-$(git -C "$root" rev-parse HEAD)}
  on_all "set -e; if [ -d $(printf %q "$remote_dir")/.git ]; then git -C $(printf %q "$remote_dir") fetch -q origin;
    else git clone -q $(printf %q "$REPO") $(printf %q "$remote_dir"); fi;
    git -C $(printf %q "$remote_dir") checkout -q $(printf %q "$ref")"
else
  tarball=$(mktemp --suffix=.tar.gz)
  trap 'rm -f "$tarball"' EXIT
  snapshot=$(git -C "$root" stash create)
  git -C "$root" archive --format=tar.gz -o "$tarball" "${snapshot:-HEAD}"
  gcloud compute tpus tpu-vm scp "$tarball" "$NAME:c3-jax-src.tar.gz" "${gc[@]}" --worker=all
  on_all "set -e; mkdir -p $(printf %q "$remote_dir"); tar -xzf c3-jax-src.tar.gz -C $(printf %q "$remote_dir")"
fi

# 3. Install (a venv in the checkout; jax[tpu] brings libtpu).
on_all "set -e; cd $(printf %q "$remote_dir"); [ -x .venv/bin/python ] || python3 -m venv .venv;
  .venv/bin/pip install -q -U pip; .venv/bin/pip install -q -e . 'jax[tpu]'"

# 4. Data and checkpoints the config reads.
for path in ${SYNC:-}; do
  on_all "mkdir -p $(printf %q "$remote_dir/$(dirname "$path")")"
  gcloud compute tpus tpu-vm scp --recurse "$root/$path" \
    "$NAME:$remote_dir/$(dirname "$path")/" "${gc[@]}" --worker=all
done

# 5. The run, on all workers at once; their output streams here, tagged by host.
args=$(printf '%q ' "$@")
status=0
on_all "set -o pipefail; cd $(printf %q "$remote_dir"); mkdir -p logs;
  C3_DISTRIBUTED=1 .venv/bin/python -m c3_jax.main $args 2>&1 | tee logs/tpu_run.log |
  sed -u \"s/^/[\$(hostname)] /\"" || status=$?

# 6. Outputs (process 0 writes them; checkpoints stay on the slice) and every worker's log.
mkdir -p "$results"
if gcloud compute tpus tpu-vm ssh "$NAME" "${gc[@]}" --worker=0 --command \
  "tar -czf /tmp/c3-results.tar.gz --exclude=checkpoints -C $(printf %q "$(dirname "$remote_workdir")") $(printf %q "$(basename "$remote_workdir")")"; then
  gcloud compute tpus tpu-vm scp "$NAME:/tmp/c3-results.tar.gz" "$results/" "${gc[@]}" --worker=0
  tar -xzf "$results/c3-results.tar.gz" -C "$results" && rm "$results/c3-results.tar.gz"
fi
for ((w = 0; w < workers; w++)); do
  gcloud compute tpus tpu-vm scp "$NAME:$remote_dir/logs/tpu_run.log" "$results/worker_$w.log" \
    "${gc[@]}" --worker="$w" || true
done
echo "outputs and logs in $results"

if [[ ${DELETE:-0} == 1 ]]; then
  gcloud compute tpus tpu-vm delete "$NAME" "${gc[@]}" --quiet
fi
exit "$status"
