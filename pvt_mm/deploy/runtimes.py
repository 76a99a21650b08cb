"""Running exported graphs in ONNX Runtime and OpenVINO (CPU), and comparing with PyTorch.

The runners live in the torch-free :mod:`pvt_mm_runtime.runtimes` (re-exported here); the
comparisons with PyTorch are here."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from pvt_mm_runtime.runtimes import (OPENVINO_PRECISION_HINT, ORT_KERNEL_PRECISION,  # noqa: F401
                                     PRECISIONS, RUNTIMES, RuntimeModel, openvino_core)

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def max_abs_diff(outputs: Sequence[np.ndarray], reference: Sequence[Tensor]) -> float:
    """Largest |runtime - PyTorch| over all outputs (shapes must agree)."""
    if len(outputs) != len(reference):
        raise ValueError(f'{len(outputs)} runtime outputs vs {len(reference)} PyTorch outputs')
    worst = 0.
    for o, r in zip(outputs, reference):
        r = r.detach().float().cpu().numpy()
        if o.shape != r.shape:
            raise ValueError(f'runtime output shape {o.shape} vs PyTorch {r.shape}')
        worst = max(worst, float(np.abs(o - r).max()))
    return worst


def parity(model: 'torch.nn.Module', runtime_model: RuntimeModel, x: Tensor) -> float:
    """Max abs difference of ``runtime_model(x)`` from ``model(x)`` (eval, fp32, no grad)."""
    import torch

    from .export import flatten_outputs
    with torch.no_grad():
        ref = flatten_outputs(model.eval()(x))
    return max_abs_diff(runtime_model(x), ref)
