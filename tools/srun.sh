#!/usr/bin/env bash
# srun with the options of mmdet's/mmseg's slurm_*.sh (used by slurm_train.sh and
# slurm_test.sh):  tools/srun.sh PARTITION JOB_NAME SCRIPT [script arguments...]
# GPUS tasks (one per GPU, default 8), GPUS_PER_NODE on each node (default 8), CPUS_PER_TASK
# (default 5); SRUN_ARGS are passed to srun (e.g. "--quotatype=auto" or "-w node1"). PYTHON
# picks the interpreter (default: the repository's .venv/bin/python when it exists, else python).
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
shift 2
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$ROOT":${PYTHONPATH:-}
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
# shellcheck disable=SC2086  # SRUN_ARGS holds several srun options
exec srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="${GPUS:-8}" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="${CPUS_PER_TASK:-5}" \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS:-} \
    "$PYTHON" -u "$@"
