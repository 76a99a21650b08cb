#!/usr/bin/env bash
# Training on a Slurm cluster through srun, as mmdet's/mmseg's slurm_train.sh:
#   [GPUS=16] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS="..."] \
#       tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py arguments]
# srun starts GPUS tasks (one per GPU), GPUS_PER_NODE on each node (GPUS / GPUS_PER_NODE
# nodes); tools/train.py reads its rank and the master address from Slurm (--launcher slurm).
# The srun options and PYTHON: tools/srun.sh.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py arguments]" >&2
    exit 2
fi
TOOLS=$(cd "$(dirname "$0")" && pwd)
exec bash "$TOOLS/srun.sh" "$1" "$2" "$TOOLS/train.py" "$3" --work-dir="$4" --launcher=slurm \
    "${@:5}"
