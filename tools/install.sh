#!/usr/bin/env bash
# Create .venv and install the pinned stack plus pvt_mm (editable). Used by `make install`.
# Honours PIP_FIND_LINKS (e.g. a folder with a prebuilt mmcv wheel); builds mmcv otherwise.
# TORCH_SPEC overrides the torch requirement (e.g. a CUDA build on a GPU machine).
# With CI set (CI=true, as CI services and .ci/run set it), a failed native-kernel build fails
# the install; a user's install carries on without the kernels.
#
#   bash tools/install.sh           the user's venv: runtime + deployment packages, pytest
#   bash tools/install.sh --tests   the test-only packages (requirements/tests.txt) into
#                                   $VENV/test-deps, outside the venv's own sys.path (`make test`)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
export PIP_CONSTRAINT=$ROOT/requirements/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n[install %(%H:%M:%S)T] %s\n' -1 "$*"; }
is_ci() { case "${CI:-}" in "" | 0 | false | False | FALSE | no) return 1 ;; esac; }
site_packages() { "$1" -c "import sysconfig; print(sysconfig.get_path('purelib'))"; }

if [ "${1:-}" = --tests ]; then
  # Test-only packages (transformers 5 and mmpretrain 1.2.0 together break stock mmdet / mmseg
  # imports) live in a venv of their own that sees the user's venv through a .pth file: pip
  # installs there only what the user's venv lacks and never removes a package of it. Nothing
  # of it is on the user's sys.path; tests/conftest.py puts it on the test process's.
  [ -x "$VENV/bin/python" ] || { echo "no $VENV: run make install first" >&2; exit 1; }
  TESTS=$VENV/test-deps
  step "test-only packages (requirements/tests.txt) into $TESTS"
  [ -x "$TESTS/bin/python" ] || "$VENV/bin/python" -m venv --without-pip "$TESTS"
  printf 'import site; site.addsitedir(%s)\n' "'$(site_packages "$VENV/bin/python")'" \
    > "$(site_packages "$TESTS/bin/python")/_pvt_mm_base_venv.pth"
  "$TESTS/bin/python" -m pip install -q -r requirements/tests.txt
  touch "$TESTS/installed"
  exit 0
fi

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
step "mmdet, mmsegmentation, timm, the deployment runtimes, pytest"
"${PIP[@]}" install -q -r requirements/runtime.txt -r requirements/deploy.txt pytest \
  torchvision==0.28.0
step "checking torchvision"
"$VENV/bin/python" tools/fix_torchvision.py
step "pvt_mm (editable)"
"${PIP[@]}" install -q --no-build-isolation --no-deps -e .
step "pvt_mm's native attention and MLP kernels, compiled for this CPU and torch (~1 min; optional)"
if ! "$VENV/bin/python" tools/build_native.py; then
  if is_ci; then
    echo "CI=$CI: the native kernels must build here" \
      "(tools/build_native.py --verbose shows why they did not)" >&2
    exit 1
  fi
  echo "continuing without them: inference attention and MLPs run as oneDNN matmuls" >&2
fi
# stock mmdet / mmseg first, in an interpreter that has not imported pvt_mm
"$VENV/bin/python" -c "import mmdet.models, mmseg.models" || {
  echo "stock mmdet / mmseg do not import in $VENV (above). An earlier make install put the" \
    "test-only transformers 5 + mmpretrain 1.2.0 there, which break them (make test now keeps" \
    "them in $VENV/test-deps): $VENV/bin/python -m pip uninstall -y transformers mmpretrain" \
    "motmetrics, or recreate the venv: rm -rf $VENV && make install" >&2
  exit 1
}
"$VENV/bin/python" -c "import pvt_mm; print('pvt_mm', pvt_mm.__version__, 'installed')"
