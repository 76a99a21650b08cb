"""The MLP over bands of image rows (the CPU fast paths of :class:`~pvt_mm.models.layers.Mlp`).

Its hidden activations (``mlp_ratio`` x wider than the tokens: 136 MiB per image at stride 4 for
800x1333 in fp32, held twice around the depthwise conv) never exist whole: each band's hidden
stays cache-sized (8 MiB measured faster than 32 MiB and than whole maps on a 2-core EPYC, and
far lighter on memory); the depthwise conv reads one extra row on each side of a band. Training
takes the same path forward and recomputes band by band backward (:mod:`.mlp_grad`).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..layers.mlp import Mlp
from ..layers.shape import HW
from .fused import OneDNNKernels

INFER_BAND_BYTES = 8 * 2 ** 20
DWCONV_HALO = 1  # rows of context the 3x3 depthwise conv needs on each side


class RowBand(NamedTuple):
    """One band of rows: ``read`` (absolute, with halo), ``keep`` (the band's own rows within
    ``read``) and ``own`` (the same rows, absolute)."""
    read: slice
    keep: slice
    own: slice


def row_bands(height: int, band_rows: int, halo: int = 0) -> list[RowBand]:
    """Split ``height`` rows into bands of ``band_rows`` (at least 1), each read with up to
    ``halo`` rows of context on either side."""
    step = max(1, band_rows)
    bands = []
    for r0 in range(0, height, step):
        r1 = min(r0 + step, height)
        a, b = max(r0 - halo, 0), min(r1 + halo, height)
        bands.append(RowBand(slice(a, b), slice(r0 - a, r1 - a), slice(r0, r1)))
    return bands


def halo(mlp: Mlp) -> int:
    """Rows of context each output row needs on either side."""
    return DWCONV_HALO if mlp.dwconv is not None else 0


def mlp_bands(mlp: Mlp, hw: HW, row_bytes: int) -> list[RowBand]:
    """Row bands whose hidden activations stay near ``INFER_BAND_BYTES``, given the bytes
    of one row of one hidden channel (``row_bytes``)."""
    return row_bands(hw[0], INFER_BAND_BYTES // (row_bytes * mlp.fc1.out_features), halo(mlp))


def mlp_rows(mlp: Mlp, x: Tensor, keep: slice, kernels: OneDNNKernels) -> Tensor:
    """x: (B, h, W, C) token rows -> (B, len(keep), W, C): the MLP output of rows ``keep``;
    the other rows are only context for the depthwise conv. Activations fused into the op
    before them."""
    if mlp.dwconv is None:
        x = kernels.linear(x[:, keep], mlp.fc1, 'gelu')
    else:
        x = kernels.linear(x, mlp.fc1, 'relu' if mlp.relu is not None else 'none')
        conv = mlp.dwconv.dwconv
        x = kernels.conv(x.permute(0, 3, 1, 2), conv, 'gelu').permute(0, 2, 3, 1)[:, keep]
    return mlp.drop(kernels.linear(mlp.drop(x), mlp.fc2))


def mlp_banded(mlp: Mlp, x: Tensor, hw: HW, dtype: torch.dtype) -> Tensor:
    """Without autograd, fused oneDNN kernels in ``dtype``: x (B, N, C) -> (B, N, C), one band
    of rows at a time."""
    B, N, C = x.shape
    kernels = OneDNNKernels(dtype, autograd=False)
    rows = x.view(B, *hw, C)
    bands = mlp_bands(mlp, hw, B * hw[1] * dtype.itemsize)
    if len(bands) == 1:
        return mlp_rows(mlp, rows, slice(None), kernels).view(B, N, C)
    out = x.new_empty(B, *hw, C, dtype=dtype)
    for band in bands:
        out[:, band.own] = mlp_rows(mlp, rows[:, band.read], band.keep, kernels)
    return out.view(B, N, C)
