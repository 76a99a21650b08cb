import sys
from pathlib import Path

import pytest
import torch

import pvt_mm  # noqa: F401  first: pvt_mm._compat guards mmpretrain before mmdet imports it

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
