#!/usr/bin/env bash
# torchrun with the environment of mmdet's/mmseg's dist_*.sh (used by dist_train.sh and
# dist_test.sh):  tools/torchrun.sh NUM_PROCESSES SCRIPT [script arguments...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, PORT. PYTHON picks the interpreter (default:
# the repository's .venv/bin/python when it exists, else python).
set -euo pipefail
NPROC=$1
shift
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$ROOT":${PYTHONPATH:-}
# the repository's environment (make install) unless PYTHON names another interpreter
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" \
    --nproc_per_node="$NPROC" \
    "$@"
