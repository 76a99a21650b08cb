"""Token <-> feature-map views shared by the PVT layers."""
from __future__ import annotations

import torch
from torch import Tensor

HW = tuple[int, int]


def nlc_to_nchw(x: Tensor, hw: HW) -> Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) map, as a view.

    The result is a channels-last strided NCHW tensor: no copy is made, and convolutions on it
    run in channels-last layout.
    """
    B, N, C = x.shape
    H, W = hw
    if N != H * W:
        raise ValueError(f'{N} tokens cannot form a {H}x{W} map')
    return x.view(B, H, W, C).permute(0, 3, 1, 2)


def nchw_to_nlc(x: Tensor) -> tuple[Tensor, HW]:
    """(B, C, H, W) map -> ((B, H*W, C) tokens, (H, W)); a view when ``x`` is channels-last."""
    H, W = x.shape[-2:]
    return x.flatten(2).transpose(1, 2), (H, W)


def _adaptive_avg_matrix(ones: Tensor, bins: int) -> Tensor:
    """(bins, L) averaging matrix of adaptive average pooling of a length-L axis, where ``ones``
    is an (L,) tensor of ones: bin i averages [floor(i*L/bins), ceil((i+1)*L/bins)).

    L is read from ``ones`` (a tensor), so traced and exported graphs compute it at run time."""
    pos = ones.cumsum(0) - 1  # 0 .. L-1
    length = ones.sum()
    i = torch.arange(bins, device=ones.device)
    start = (i * length).div(bins, rounding_mode='floor')
    end = ((i + 1) * length + bins - 1).div(bins, rounding_mode='floor')
    inside = (pos[None] >= start[:, None]) & (pos[None] < end[:, None])
    return inside.to(torch.float32) / (end - start).to(torch.float32)[:, None]


def adaptive_avg_pool2d_matmul(x: Tensor, size: int) -> Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` for a (B, C, H, W) map as two matmuls with averaging
    matrices built from the runtime H and W: the form ONNX Runtime and OpenVINO accept at any
    input size (an exported AdaptiveAvgPool2d bakes the traced size into its kernel)."""
    ones = torch.ones_like(x[0, 0, :, :], dtype=torch.int64)  # (H, W)
    rows = _adaptive_avg_matrix(ones[:, 0], size).to(x.dtype)  # (size, H)
    cols = _adaptive_avg_matrix(ones[0, :], size).to(x.dtype)  # (size, W)
    return rows @ x @ cols.t()
