"""The built-in demo (``make demo``): generates the synthetic dataset if missing, trains and
evaluates a PVTv2-b0 detector (COCO bbox mAP) and a Semantic FPN segmentor (mIoU) on CPU, and
draws validation predictions beside the ground truth and the training curves (their paths are
printed at the end). A few timed iterations of each stage at the start plan both stages to fit
``--time-budget`` (pvt_mm/demo/plan.py).

    .venv/bin/python tools/demo.py [--skip-seg] [--data-root data/demo] \\
        [--work-dir work_dirs/demo] [--time-budget 600]
"""
import os
import sys
import time

STARTED = time.perf_counter()  # the time budget covers the imports too

# Before torch loads OpenMP: idle threads sleep instead of spinning. On a busy machine (CI, a
# shared box) spinning threads that wait for each other make a step several times slower.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
import pvt_mm._quiet  # noqa: F401,E402  first: drops the pkg_resources deprecation noise

from pvt_mm.demo.pipeline import run_demo  # noqa: E402

if __name__ == '__main__':
    sys.exit(run_demo(started=STARTED))
