#!/usr/bin/env bash
# Distributed testing through torchrun, as mmdet's/mmseg's dist_test.sh:
#   tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCESSES [test.py args...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, PORT. Without CUDA the processes use gloo.
# PYTHON picks the interpreter (default: the repository's .venv/bin/python when it exists).
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT NUM_PROCESSES [tools/test.py arguments]" >&2
    exit 2
fi
TOOLS=$(dirname "$0")
exec bash "$TOOLS/torchrun.sh" "$3" "$TOOLS/test.py" "$1" "$2" --launcher pytorch "${@:4}"
