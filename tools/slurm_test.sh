#!/usr/bin/env bash
# Testing on a Slurm cluster through srun, as mmdet's/mmseg's slurm_test.sh:
#   [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS="..."] \
#       tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [tools/test.py arguments]
# srun starts GPUS tasks (one per GPU), GPUS_PER_NODE on each node; tools/test.py reads its
# rank from Slurm (--launcher slurm). The srun options and PYTHON: tools/srun.sh.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG CHECKPOINT [tools/test.py arguments]" >&2
    exit 2
fi
TOOLS=$(cd "$(dirname "$0")" && pwd)
exec bash "$TOOLS/srun.sh" "$1" "$2" "$TOOLS/test.py" "$3" "$4" --launcher=slurm "${@:5}"
