"""Spatial-reduction attention (PVT v1/v2) and its linear variant (PVTv2-li).

This is the reference computation, the one a researcher reads and changes (subclass and
override :meth:`SpatialReductionAttention.reduce` or :meth:`~SpatialReductionAttention._attend`).
The CPU speed-ups live in :mod:`pvt_mm.models.fast` and run only modules that are exactly this
class with these methods (docs/fast_path.md).
"""
from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from .shape import HW, adaptive_avg_pool2d_matmul, nchw_to_nlc, nlc_to_nchw
from .tracing import is_graph_capture

AttnMode = Literal['sdpa', 'explicit']
ATTN_MODES: tuple[str, ...] = ('sdpa', 'explicit')
LINEAR_SR_POOL_SIZE = 7  # PVTv2-li pools keys/values to a fixed 7x7 grid


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys/values come from a spatially reduced map.

    Parameter names follow the official code (``q``, ``kv``, ``proj``, ``sr``, ``norm``).

    Args:
        dim: token channels C.
        num_heads: attention heads (C must be divisible by it).
        sr_ratio: kernel and stride of the reduction conv; 1 means no reduction.
        linear: PVTv2-li: 7x7 adaptive average pool, 1x1 conv, LayerNorm and GELU.
        qkv_bias: bias in ``q`` and ``kv``.
        attn_drop: dropout on attention weights; proj_drop: dropout after ``proj``.
        attn_mode: ``'sdpa'`` (``F.scaled_dot_product_attention``, no attention matrix kept)
            or ``'explicit'`` (softmax(q k^T * scale) v, the reference formulation).
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1, linear: bool = False,
                 qkv_bias: bool = True, attn_drop: float = 0., proj_drop: float = 0.,
                 attn_mode: AttnMode = 'sdpa') -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        if sr_ratio < 1:
            raise ValueError(f'sr_ratio must be >= 1, got {sr_ratio}')
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.attn_mode = attn_mode
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pool: nn.Module | None = None
        self.sr: nn.Conv2d | None = None
        self.norm: nn.LayerNorm | None = None
        self.act: nn.Module | None = None
        if linear:
            self.pool = nn.AdaptiveAvgPool2d(LINEAR_SR_POOL_SIZE)
            self.sr = nn.Conv2d(dim, dim, kernel_size=1)
            self.norm = nn.LayerNorm(dim)
            self.act = nn.GELU()
        elif sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    @property
    def attn_mode(self) -> str:
        return self._attn_mode

    @attn_mode.setter
    def attn_mode(self, mode: str) -> None:
        if mode not in ATTN_MODES:
            raise ValueError(f'attn_mode must be one of {ATTN_MODES}, got {mode!r}')
        self._attn_mode = mode

    def forward(self, x: Tensor, hw: HW) -> Tensor:
        """x: (B, N, C) tokens of an (H, W) = ``hw`` map -> (B, N, C)."""
        q = self.q(x)
        kv = self.kv(self.reduce(x, hw))
        return self.proj_drop(self.proj(self._attend(q, kv)))

    def reduce(self, x: Tensor, hw: HW) -> Tensor:
        """(B, N, C) tokens -> (B, M, C) reduced tokens the keys/values are computed from.
        In a traced / exported graph the li pooling is written as matmuls that follow the
        input size (an exported adaptive pool would keep the traced size)."""
        if self.sr is None:
            return x
        x_ = nlc_to_nchw(x, hw)
        if self.pool is not None:
            x_ = (adaptive_avg_pool2d_matmul(x_, LINEAR_SR_POOL_SIZE) if is_graph_capture()
                  else self.pool(x_))
        x_, _ = nchw_to_nlc(self.sr(x_))
        x_ = self.norm(x_)
        return x_ if self.act is None else self.act(x_)

    def _attend(self, q: Tensor, kv: Tensor) -> Tensor:
        """q: (B, N, C) queries, kv: (B, M, 2C) keys|values -> (B, N, C) multi-head
        softmax(q k^T * scale) v, by SDPA or explicitly (``attn_mode``)."""
        B, N, C = q.shape
        q = q.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = kv.reshape(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self._attn_mode == 'sdpa':
            drop = self.attn_drop if self.training else 0.
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        else:
            attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
            out = F.dropout(attn, self.attn_drop, training=self.training) @ v
        return out.transpose(1, 2).reshape(B, N, C)
