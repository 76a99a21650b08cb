"""The built-in demo (``make demo``): generates the synthetic dataset if missing, trains and
evaluates a PVTv2-b0 detector (COCO bbox mAP) and a Semantic FPN segmentor (mIoU) on CPU.

    python tools/demo.py [--skip-seg] [--data-root data/demo] [--work-dir work_dirs/demo]
"""
import os
import sys
import time
import warnings

STARTED = time.perf_counter()  # the time budget covers the imports too

# Before torch loads OpenMP: idle threads sleep instead of spinning. On a busy machine (CI, a
# shared box) spinning threads that wait for each other make a step several times slower.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
# mmengine imports the deprecated pkg_resources; keep the demo's output readable
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

from pvt_mm.demo.pipeline import run_demo  # noqa: E402

if __name__ == '__main__':
    sys.exit(run_demo(started=STARTED))
