"""Token <-> feature-map views shared by the PVT layers."""
from __future__ import annotations

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
