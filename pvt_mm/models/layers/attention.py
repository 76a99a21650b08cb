"""Spatial-reduction attention (PVT v1/v2) and its linear variant (PVTv2-li)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import native
from .exec_path import ExecKind, ExecPath, decide_exec_path
from .fused import matmul_nt
from .shape import HW, adaptive_avg_pool2d_matmul, nchw_to_nlc, nlc_to_nchw

AttnMode = Literal['sdpa', 'explicit']
ATTN_MODES: tuple[str, ...] = ('sdpa', 'explicit')
LINEAR_SR_POOL_SIZE = 7  # PVTv2-li pools keys/values to a fixed 7x7 grid
# Inference attention on CPU runs over chunks of queries whose score block (queries x reduced
# keys) stays about this big: exact softmax attention through oneDNN matmuls, never the whole
# matrix. Measured 1.5x (fp32) and 2.3x (bf16) faster than the CPU SDPA kernel at 800x1333.
# 2 MiB: the in-place softmax of a block that size runs from cache (PVT-S stage-1 attention
# fp32 148 -> 132 ms at 800x1333 against 8 MiB blocks; bf16 unchanged; 1 MiB is slower again).
INFER_SCORE_BYTES = 2 * 2 ** 20
# The native tile kernel's fp32 score block per thread (query rows x reduced keys): PVT-S
# stage-1 attention at 800x1333, fp32, 2 threads: 32 / 64 / 128 rows of 1025 keys = 162 / 155 /
# 146 ms (oneDNN matmul chunks: 209 ms in the same run).
TILE_SCORE_BYTES = 512 * 2 ** 10


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

    def reduce(self, x: Tensor, hw: HW, path: ExecPath | None = None) -> Tensor:
        """(B, N, C) tokens -> (B, M, C) reduced tokens the keys/values are computed from.
        On the traced path the li pooling is written as matmuls that follow the input size."""
        if self.sr is None:
            return x
        x_ = nlc_to_nchw(x, hw)
        if self.pool is not None:
            traced = path is not None and path.traced
            x_ = adaptive_avg_pool2d_matmul(x_, LINEAR_SR_POOL_SIZE) if traced else self.pool(x_)
        x_, _ = nchw_to_nlc(self.sr(x_))
        x_ = self.norm(x_)
        return x_ if self.act is None else self.act(x_)

    def forward(self, x: Tensor, hw: HW, path: ExecPath | None = None) -> Tensor:
        """x: (B, N, C) tokens of an (H, W) = ``hw`` map -> (B, N, C). ``path``: the backbone's
        execution path (decided here when called alone)."""
        if path is None:
            path = decide_exec_path(x, self.q.weight.dtype)
        if path.fast:
            return self._forward_fast(x, hw, path)
        return self._forward_reference(x, hw, path)

    def _forward_reference(self, x: Tensor, hw: HW, path: ExecPath | None = None) -> Tensor:
        q = self.q(x)
        kv = self.kv(self.reduce(x, hw, path))
        return self.proj_drop(self.proj(self._attend(q, kv)))

    def _attend(self, q: Tensor, kv: Tensor) -> Tensor:
        """q: (B, N, C) queries, kv: (B, M, 2C) keys|values -> (B, N, C) multi-head
        softmax(q k^T * scale) v, by SDPA or explicitly (``attn_mode``)."""
        B, N, C = q.shape
        q = q.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = kv.reshape(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self._attn_mode == 'sdpa':
            drop = self.attn_drop if self.training else 0.
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        else:
            attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
            out = F.dropout(attn, self.attn_drop, training=self.training) @ v
        return out.transpose(1, 2).reshape(B, N, C)

    def _forward_fast(self, x: Tensor, hw: HW, path: ExecPath) -> Tensor:
        """The oneDNN paths: fused linears; without autograd (and with the SDPA mode and no
        attention dropout to apply) exact attention over chunks of queries, with ``q`` and
        ``proj`` folded into the keys and values where that costs fewer FLOPs."""
        kernels = path.kernels
        infer = path.kind is ExecKind.ONEDNN_INFER
        if infer and self.pool is None:
            x = x.to(path.dtype)  # q and the reduction (or kv) both read x: cast it once
        chunked = infer and self._attn_mode == 'sdpa' and (self.attn_drop == 0
                                                           or not self.training)
        kv = kernels.linear(self.reduce(x, hw), self.kv)
        if chunked and (self.proj_drop.p == 0 or not self.training) \
                and self.fold_is_cheaper(kv.shape[1]):
            return self._attend_folded(x.to(path.dtype), kv)
        q = kernels.linear(x, self.q)
        out = self._attend_chunked(q, kv) if chunked else self._attend(q, kv)
        return self.proj_drop(kernels.linear(out, self.proj))

    def fold_is_cheaper(self, m: int) -> bool:
        """Per query token, folding costs ``heads * m * C`` multiply-adds for the scores (and
        as many for the output) against ``C * C + m * C`` for ``q`` (``proj``) plus the
        scores: cheaper when ``m * (heads - 1) < C``: one head, or the 49 keys of PVTv2-li."""
        return m * (self.num_heads - 1) < self.num_heads * self.head_dim

    def _attend_chunked(self, q: Tensor, kv: Tensor) -> Tensor:
        """Inference fast path. q: (B, N, C) queries, kv: (B, M, 2C) keys|values ->
        (B, N, C) = softmax(q k^T * scale) v per head, over tiles of queries."""
        B, N, C = q.shape
        h, d = self.num_heads, self.head_dim
        out = q.new_empty(B, N, C)
        for b in range(B):
            kv_b = kv[b].view(-1, 2, h, d)
            k_t = (kv_b[:, 0] * self.scale).permute(1, 2, 0).contiguous()  # (h, d, M)
            v = kv_b[:, 1].transpose(0, 1).contiguous()  # (h, M, d)
            tiled_attention(q[b], k_t, v, out[b])
        return out

    def _attend_folded(self, x: Tensor, kv: Tensor) -> Tensor:
        """Inference fast path: ``q`` and ``proj`` folded into the (few) keys and values, so
        the (N, C) x (C, C) projections of every token are not computed.
        x: (B, N, C) tokens, kv: (B, M, 2C) -> (B, N, C) = proj(attention(q(x), k, v)).

        With Wq_h (d, C) the rows of ``q.weight`` and Wp_h (C, d) the columns of
        ``proj.weight`` of head h, and s the scale:
        sum_h softmax((x Wq_h^T + bq_h) k_h^T s) v_h Wp_h^T + bp
            = [softmax_h(x (s k_h Wq_h)^T + s k_h bq_h)]_h [v_h Wp_h^T]_h + bp,
        one matmul for the scores of all heads side by side, one for the output (the folded
        keys and values are computed in fp32)."""
        B, N, C = x.shape
        h, d = self.num_heads, self.head_dim
        M = kv.shape[1]
        out = x.new_empty(B, N, C)
        wq = self.q.weight.float().view(h, d, C)
        bq = None if self.q.bias is None else self.q.bias.float().view(h, d, 1)
        wp_t = self.proj.weight.float().view(C, h, d).permute(1, 2, 0)  # (h, d, C)
        bp = self.proj.bias.float()
        for b in range(B):
            kv_b = kv[b].float().view(M, 2, h, d).permute(1, 2, 0, 3)  # (2, h, M, d)
            k, v = kv_b[0] * self.scale, kv_b[1]
            k_t = (k @ wq).permute(2, 0, 1).reshape(1, C, h * M).to(x.dtype).contiguous()
            k_bias = None if bq is None else (k @ bq).reshape(h * M)
            v_fold = (v @ wp_t).reshape(1, h * M, C).to(x.dtype)  # (1, h M, C)
            tiled_attention(x[b], k_t, v_fold, out[b], k_bias, bp, groups=h)
        return out


def tiled_attention(q: Tensor, k_t: Tensor, v: Tensor, out: Tensor,
                    k_bias: Tensor | None = None, v_bias: Tensor | None = None,
                    groups: int = 1) -> None:
    """Inference attention of A heads side by side, written into ``out``:
    ``out[:, a] = softmax_g(q[:, a] @ k_t[a] + k_bias[a]) @ v[a] + v_bias[a]`` for q (N, A*K),
    k_t (A, K, M) (keys transposed, scale folded in), v (A, M, E), out (N, A*E), k_bias (A*M,),
    v_bias (A*E,); the M keys of a head are ``groups`` softmax groups side by side.

    The one decision between the two CPU implementations: the native tile kernel
    (:mod:`.native`: scores of a tile of queries stay in cache) where it is built for this
    dtype, else :func:`chunked_attention` (oneDNN matmuls over query chunks) per head."""
    A, K, M = k_t.shape
    E = v.shape[2]
    if native.supports(q.dtype) and (q.dtype == torch.float32 or K % 2 == 0):
        rows = max(16, min(256, TILE_SCORE_BYTES // (4 * M)) // 16 * 16)
        none = torch.empty(0)
        with torch.profiler.record_function('pvt_mm::tile_attention'):  # named in profiles
            native.kernel().tile_attention(
                q, k_t, v, out, none if k_bias is None else k_bias.float().contiguous(),
                none if v_bias is None else v_bias.float().contiguous(), groups, rows)
        return
    for a in range(A):
        kb = None if k_bias is None else k_bias.view(A, M)[a].to(q.dtype)
        vb = None if v_bias is None else v_bias.view(A, E)[a].to(q.dtype)
        chunked_attention(q[:, a * K:(a + 1) * K], k_t[a].t().contiguous(),
                          v[a].t().contiguous(), out[:, a * E:(a + 1) * E], kb, vb, groups)


def chunked_attention(q: Tensor, k: Tensor, v_t: Tensor, out: Tensor,
                      k_bias: Tensor | None = None, v_bias: Tensor | None = None,
                      heads: int = 1) -> None:
    """``out`` (N, E) <- softmax(q k^T + k_bias) v + v_bias for q (N, d), k (M, d), v_t (E, M)
    (v transposed), k_bias (M,), v_bias (E,); the M keys are ``heads`` groups side by side,
    each with a softmax of its own. Through oneDNN matmuls over chunks of queries whose
    (rows, M) score block stays near ``INFER_SCORE_BYTES``, the softmax in place."""
    N, M = q.shape[0], k.shape[0]
    rows = max(1, INFER_SCORE_BYTES // (M * q.element_size()))
    for r0 in range(0, N, rows):
        scores = matmul_nt(q[r0:r0 + rows], k, k_bias)
        grouped = scores.view(scores.shape[0], heads, M // heads)
        torch.softmax(grouped, -1, out=grouped)
        out[r0:r0 + rows] = matmul_nt(scores, v_t, v_bias)
