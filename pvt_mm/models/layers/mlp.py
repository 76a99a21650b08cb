"""Feed-forward layers of PVT blocks (v1: plain MLP; v2: with a 3x3 depthwise conv)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import native
from .exec_path import ExecKind, ExecPath, decide_exec_path
from .fused import OneDNNKernels, cached_cast
from .mlp_grad import BandedMlpFunction
from .shape import HW, RowBand, nchw_to_nlc, nlc_to_nchw, row_bands

# On the CPU fast paths the MLP runs over bands of image rows, so that its hidden activations
# (mlp_ratio x wider than the tokens: 136 MiB per image at stride 4 for 800x1333 in fp32, held
# twice around the depthwise conv) never exist whole: each band's hidden stays cache-sized (8 MiB
# measured faster than 32 MiB and than whole maps on a 2-core EPYC, and far lighter on memory);
# the depthwise conv reads one extra row on each side of a band. Training takes the same path
# forward and recomputes band by band backward (mlp_grad.py).
INFER_BAND_BYTES = 8 * 2 ** 20
# Without a depthwise conv (v1) the native fused MLP (csrc/tile_mlp.cpp) runs instead, over
# tiles of this many token rows. PVT-S's four MLPs at 512x512, fp32 and bf16, 2 threads, 32 / 64 /
# 128 rows: 64 the fastest in 4 of the 8 cases and within 5% of the fastest in the others.
NATIVE_MLP_TILE = 64


class DWConv(nn.Module):
    """3x3 depthwise conv on tokens; wraps ``dwconv`` to keep the official key names."""

    HALO = 1  # rows of context the 3x3 kernel needs on each side

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: Tensor, hw: HW) -> Tensor:
        """x: (B, N, C) tokens of an (H, W) = ``hw`` map -> dwconv(x): (B, N, C)."""
        return nchw_to_nlc(self.dwconv(nlc_to_nchw(x, hw)))[0]

    def rows(self, x: Tensor, kernels: OneDNNKernels, act: str = 'none') -> Tensor:
        """Fast paths. x: (B, h, W, C) rows of tokens -> act(dwconv(x)): (B, h, W, C)."""
        return kernels.conv(x.permute(0, 3, 1, 2), self.dwconv, act).permute(0, 2, 3, 1)


class Mlp(nn.Module):
    """``fc1 -> [ReLU] -> [DWConv] -> GELU -> fc2`` on (B, N, C) tokens.

    On the oneDNN paths (:mod:`.exec_path`) each activation is fused into the op before it and
    the MLP runs over bands of rows (inference, and training via
    :class:`.mlp_grad.BandedMlpFunction` when there is no dropout to replay).

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

    def forward(self, x: Tensor, hw: HW, path: ExecPath | None = None) -> Tensor:
        """x: (B, N, C) tokens of an (H, W) = ``hw`` map -> (B, N, C). ``path``: the backbone's
        execution path (decided here when called alone)."""
        if path is None:
            path = decide_exec_path(x, self.fc1.weight.dtype)
        if path.fast:
            return self._forward_fast(x, hw, path)
        return self._forward_reference(x, hw)

    def _forward_reference(self, x: Tensor, hw: HW) -> Tensor:
        x = self.fc1(x)
        if self.relu is not None:
            x = self.relu(x)
        if self.dwconv is not None:
            x = self.dwconv(x, hw)
        x = self.drop(self.act(x))
        return self.drop(self.fc2(x))

    # ---- the oneDNN paths ------------------------------------------------------------------
    def _forward_fast(self, x: Tensor, hw: HW, path: ExecPath) -> Tensor:
        B, N, C = x.shape
        if path.kind is ExecKind.ONEDNN_INFER:
            return self._forward_banded(x, hw, path.dtype)
        params = list(self.parameters())
        if ((self.drop.p == 0 or not self.training)
                and (x.requires_grad or any(p.requires_grad for p in params))):
            return BandedMlpFunction.apply(x, hw, self, path.dtype, *params)
        return self._rows(x.view(B, *hw, C), slice(None), path.kernels).view(B, N, C)

    def _rows(self, x: Tensor, keep: slice, kernels: OneDNNKernels) -> Tensor:
        """x: (B, h, W, C) token rows -> (B, len(keep), W, C): the MLP output of rows
        ``keep``; the other rows are only context for the depthwise conv."""
        if self.dwconv is None:
            x = kernels.linear(x[:, keep], self.fc1, 'gelu')
        else:
            x = kernels.linear(x, self.fc1, 'relu' if self.relu is not None else 'none')
            x = self.dwconv.rows(x, kernels, 'gelu')[:, keep]
        return self.drop(kernels.linear(self.drop(x), self.fc2))

    @property
    def halo(self) -> int:
        """Rows of context each output row needs on either side."""
        return DWConv.HALO if self.dwconv is not None else 0

    def bands(self, hw: HW, row_bytes: int) -> list[RowBand]:
        """Row bands whose hidden activations stay near ``INFER_BAND_BYTES``, given the bytes
        of one row of one hidden channel (``row_bytes``)."""
        return row_bands(hw[0], INFER_BAND_BYTES // (row_bytes * self.fc1.out_features),
                         self.halo)

    def native_supported(self, dtype: torch.dtype) -> bool:
        """True when the native fused MLP (:mod:`.native`) runs this MLP in ``dtype`` at
        inference: no depthwise conv or ReLU (v1), no dropout to apply, biases, a hidden width
        that is a multiple of 64 and, for bf16, an even input width."""
        return (self.dwconv is None and self.relu is None and native.supports(dtype)
                and (self.drop.p == 0 or not self.training)
                and self.fc1.bias is not None and self.fc2.bias is not None
                and self.fc1.out_features % 64 == 0
                and (dtype == torch.float32 or self.fc1.in_features % 2 == 0))

    def forward_native(self, x: Tensor, dtype: torch.dtype, norm: nn.LayerNorm | None = None,
                       residual: bool = False) -> Tensor:
        """Inference where :meth:`native_supported`: x (B, N, C) -> (B, N, C) =
        ``[x +] self(norm(x))`` in one native pass, the matmuls in ``dtype``; x and the result
        fp32 or ``dtype`` (the residual stream under autocast is fp32)."""
        B, N, C = x.shape
        kernel = native.kernel()
        blocks = f'native_blocks_{dtype}'  # one packed copy per dtype
        w1 = cached_cast(self.fc1.weight, dtype, self.fc1, blocks, kernel.prepare_weight)
        w2 = cached_cast(self.fc2.weight, dtype, self.fc2, blocks, kernel.prepare_weight)
        b1 = cached_cast(self.fc1.bias, torch.float32, self.fc1, 'bias_fp32')
        b2 = cached_cast(self.fc2.bias, torch.float32, self.fc2, 'bias_fp32')
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

    def _forward_banded(self, x: Tensor, hw: HW, dtype: torch.dtype) -> Tensor:
        """Without autograd, fused kernels in ``dtype``: x (B, N, C) -> (B, N, C), one band of
        rows at a time (the native fused kernel where :meth:`native_supported`)."""
        if self.native_supported(dtype):
            return self.forward_native(x, dtype)
        B, N, C = x.shape
        kernels = OneDNNKernels(dtype, autograd=False)
        rows = x.view(B, *hw, C)
        bands = self.bands(hw, B * hw[1] * dtype.itemsize)
        if len(bands) == 1:
            return self._rows(rows, slice(None), kernels).view(B, N, C)
        out = x.new_empty(B, *hw, C, dtype=dtype)
        for band in bands:
            out[:, band.own] = self._rows(rows[:, band.read], band.keep, kernels)
        return out.view(B, N, C)
