"""The CPU fast paths of :class:`~pvt_mm.models.layers.Mlp` (stock modules only,
:mod:`.eligibility`): row bands (:mod:`.bands`), the recomputing banded backward
(:mod:`.mlp_grad`) and, for v1 MLPs at inference, the native fused kernel (``csrc/tile_mlp.cpp``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers.mlp import Mlp
from ..layers.shape import HW
from . import native
from .bands import mlp_banded, mlp_rows
from .exec_path import ExecKind, ExecPath
from .fused import cached_cast
from .mlp_grad import BandedMlpFunction

# Without a depthwise conv (v1) the native fused MLP (csrc/tile_mlp.cpp) runs instead, over
# tiles of this many token rows. PVT-S's four MLPs at 512x512, fp32 and bf16, 2 threads, 32 / 64 /
# 128 rows: 64 the fastest in 4 of the 8 cases and within 5% of the fastest in the others.
NATIVE_MLP_TILE = 64


def mlp_forward(mlp: Mlp, x: Tensor, hw: HW, path: ExecPath) -> Tensor:
    """``mlp(x, hw)`` on a oneDNN path: x (B, N, C) -> (B, N, C)."""
    B, N, C = x.shape
    if path.kind is ExecKind.ONEDNN_INFER:
        if native_supported(mlp, path.dtype):
            return forward_native(mlp, x, path.dtype)
        return mlp_banded(mlp, x, hw, path.dtype)
    params = list(mlp.parameters())
    if ((mlp.drop.p == 0 or not mlp.training)
            and (x.requires_grad or any(p.requires_grad for p in params))):
        return BandedMlpFunction.apply(x, hw, mlp, path.dtype, *params)
    return mlp_rows(mlp, x.view(B, *hw, C), slice(None), path.kernels).view(B, N, C)


def native_supported(mlp: Mlp, dtype: torch.dtype) -> bool:
    """True when the native fused MLP runs ``mlp`` in ``dtype`` at inference: no depthwise
    conv or ReLU (v1), no dropout to apply, biases, a hidden width that is a multiple of 64
    and, for bf16, an even input width."""
    return (mlp.dwconv is None and mlp.relu is None and native.supports(dtype)
            and (mlp.drop.p == 0 or not mlp.training)
            and mlp.fc1.bias is not None and mlp.fc2.bias is not None
            and mlp.fc1.out_features % 64 == 0
            and (dtype == torch.float32 or mlp.fc1.in_features % 2 == 0))


def forward_native(mlp: Mlp, x: Tensor, dtype: torch.dtype, norm: nn.LayerNorm | None = None,
                   residual: bool = False) -> Tensor:
    """Inference where :func:`native_supported`: x (B, N, C) -> (B, N, C) =
    ``[x +] mlp(norm(x))`` in one native pass, the matmuls in ``dtype``; x and the result
    fp32 or ``dtype`` (the residual stream under autocast is fp32)."""
    B, N, C = x.shape
    kernel = native.kernel()
    blocks = f'native_blocks_{dtype}'  # one packed copy per dtype
    w1 = cached_cast(mlp.fc1.weight, dtype, mlp.fc1, blocks, kernel.prepare_weight)
    w2 = cached_cast(mlp.fc2.weight, dtype, mlp.fc2, blocks, kernel.prepare_weight)
    b1 = cached_cast(mlp.fc1.bias, torch.float32, mlp.fc1, 'bias_fp32')
    b2 = cached_cast(mlp.fc2.bias, torch.float32, mlp.fc2, 'bias_fp32')
    none = torch.empty(0)
    gamma = none if norm is None else cached_cast(norm.weight, torch.float32, norm, 'w_fp32')
    beta = none if norm is None else cached_cast(norm.bias, torch.float32, norm, 'b_fp32')
    rows = x.reshape(B * N, C)
    if rows.dtype not in (torch.float32, dtype):
        rows = rows.float()
    rows = rows.contiguous()
    out = torch.empty_like(rows)
    with torch.profiler.record_function('pvt_mm::tile_mlp'):  # named in profiles
        kernel.tile_mlp(rows, gamma.contiguous(), beta.contiguous(),
                        norm.eps if norm is not None else 0.0, w1, b1.contiguous(), w2,
                        b2.contiguous(), residual, out, NATIVE_MLP_TILE)
    return out.view(B, N, C)
