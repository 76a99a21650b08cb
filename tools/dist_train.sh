#!/usr/bin/env bash
# Distributed training through torchrun, as mmdet's/mmseg's dist_train.sh:
#   tools/dist_train.sh CONFIG NUM_PROCESSES [train.py args...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, PORT. Without CUDA the processes use gloo.
# PYTHON picks the interpreter (default: the repository's .venv/bin/python when it exists).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG NUM_PROCESSES [tools/train.py arguments]" >&2
    exit 2
fi
TOOLS=$(dirname "$0")
exec bash "$TOOLS/torchrun.sh" "$2" "$TOOLS/train.py" "$1" --launcher pytorch "${@:3}"
