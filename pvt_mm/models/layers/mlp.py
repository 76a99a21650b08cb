"""Feed-forward layers of PVT blocks (v1: plain MLP; v2: with a 3x3 depthwise conv).

The reference computation; the CPU speed-ups (fused kernels, row bands, the native fused MLP)
live in :mod:`pvt_mm.models.fast` and run only stock modules (docs/fast_path.md).
"""
from __future__ import annotations

from torch import Tensor, nn

from .shape import HW, nchw_to_nlc, nlc_to_nchw


class DWConv(nn.Module):
    """3x3 depthwise conv on tokens; wraps ``dwconv`` to keep the official key names."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: Tensor, hw: HW) -> Tensor:
        """x: (B, N, C) tokens of an (H, W) = ``hw`` map -> dwconv(x): (B, N, C)."""
        return nchw_to_nlc(self.dwconv(nlc_to_nchw(x, hw)))[0]


class Mlp(nn.Module):
    """``fc1 -> [ReLU] -> [DWConv] -> GELU -> fc2`` on (B, N, C) tokens.

    Args:
        dim: input/output channels.
        hidden_dim: channels between ``fc1`` and ``fc2``.
        dwconv: add the v2 depthwise conv after ``fc1``.
        extra_relu: ReLU right after ``fc1`` (PVTv2-li).
        drop: dropout after the activation and after ``fc2``.
    """

    def __init__(self, dim: int, hidden_dim: int, dwconv: bool = False,
                 extra_relu: bool = False, drop: float = 0.) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.relu = nn.ReLU() if extra_relu else None
        self.dwconv = DWConv(hidden_dim) if dwconv else None
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, hw: HW) -> Tensor:
        """x: (B, N, C) tokens of an (H, W) = ``hw`` map -> (B, N, C)."""
        x = self.fc1(x)
        if self.relu is not None:
            x = self.relu(x)
        if self.dwconv is not None:
            x = self.dwconv(x, hw)
        x = self.drop(self.act(x))
        return self.drop(self.fc2(x))
