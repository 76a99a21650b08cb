import os
import sys
from pathlib import Path

import pytest
import torch

import pvt_mm  # noqa: F401  first: pvt_mm._compat guards mmpretrain before mmdet imports it

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
# Numerics must not depend on the suite's own load: pvt_mm keeps torch's thread count (its
# load-following choice is tested in test_threads.py / test_contention.py, which switch it on).
# Also read by the tools the tests start as subprocesses.
os.environ['PVT_MM_ADAPTIVE_THREADS'] = '0'


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
