#!/usr/bin/env bash
# Create .venv and install the pinned stack plus pvt_mm (editable). Used by `make install`.
# Honours PIP_FIND_LINKS (e.g. a folder with a prebuilt mmcv wheel); builds mmcv otherwise.
# TORCH_SPEC overrides the torch requirement (e.g. a CUDA build on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
export PIP_CONSTRAINT=$ROOT/requirements/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n[install %(%H:%M:%S)T] %s\n' -1 "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
step "build tools"
"${PIP[@]}" install -q setuptools==80.9.0 wheel ninja
step "torch ($TORCH_SPEC)"
"${PIP[@]}" install -q "$TORCH_SPEC"
step "mmengine"
"${PIP[@]}" install -q mmengine==0.10.7
step "mmcv 2.1.0 with compiled ops (several minutes when no wheel is cached)"
MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} "${PIP[@]}" install -q --no-build-isolation mmcv==2.1.0
"$VENV/bin/python" -c "import mmcv.ops; from mmcv.ops import nms, RoIAlign" \
  || { echo "mmcv was installed without its compiled ops" >&2; exit 1; }
step "mmdet, mmsegmentation, timm and their undeclared dependencies"
"${PIP[@]}" install -q -r requirements/runtime.txt -r requirements/tests.txt torchvision==0.28.0
step "checking torchvision"
"$VENV/bin/python" tools/fix_torchvision.py
step "pvt_mm (editable)"
"${PIP[@]}" install -q --no-build-isolation --no-deps -e .
step "pvt_mm's native attention and MLP kernels, compiled for this CPU and torch (~1 min; optional)"
"$VENV/bin/python" tools/build_native.py \
  || echo "continuing without them: inference attention and MLPs run as oneDNN matmuls" >&2
"$VENV/bin/python" -c "import pvt_mm, mmdet.models, mmseg.models; print('pvt_mm', pvt_mm.__version__, 'installed')"
