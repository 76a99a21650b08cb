"""The CPU fast paths of :class:`~pvt_mm.models.layers.SpatialReductionAttention`.

Run only for a stock attention module (:mod:`.eligibility`); each function computes what the
module's reference ``forward`` computes, through oneDNN kernels and, without autograd, exact
softmax attention over tiles of queries (the native tile kernel, else oneDNN matmul chunks).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..layers.attention import SpatialReductionAttention
from ..layers.shape import HW
from . import native
from .exec_path import ExecKind, ExecPath
from .fused import matmul_nt

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


def attention_forward(attn: SpatialReductionAttention, x: Tensor, hw: HW, path: ExecPath
                      ) -> Tensor:
    """``attn(x, hw)`` on a oneDNN path: x (B, N, C) -> (B, N, C). Fused linears; without
    autograd (SDPA mode, no attention dropout to apply) exact attention over query tiles, with
    ``q`` and ``proj`` folded into the keys and values where that costs fewer FLOPs."""
    kernels = path.kernels
    infer = path.kind is ExecKind.ONEDNN_INFER
    if infer and attn.pool is None:
        x = x.to(path.dtype)  # q and the reduction (or kv) both read x: cast it once
    tiled = infer and attn.attn_mode == 'sdpa' and (attn.attn_drop == 0 or not attn.training)
    kv = kernels.linear(attn.reduce(x, hw), attn.kv)
    if tiled and (attn.proj_drop.p == 0 or not attn.training) \
            and fold_is_cheaper(attn, kv.shape[1]):
        return _attend_folded(attn, x.to(path.dtype), kv)
    q = kernels.linear(x, attn.q)
    out = _attend_tiled(attn, q, kv) if tiled else attn._attend(q, kv)
    return attn.proj_drop(kernels.linear(out, attn.proj))


def fold_is_cheaper(attn: SpatialReductionAttention, m: int) -> bool:
    """Per query token, folding costs ``heads * m * C`` multiply-adds for the scores (and
    as many for the output) against ``C * C + m * C`` for ``q`` (``proj``) plus the
    scores: cheaper when ``m * (heads - 1) < C``: one head, or the 49 keys of PVTv2-li."""
    return m * (attn.num_heads - 1) < attn.num_heads * attn.head_dim


def _attend_tiled(attn: SpatialReductionAttention, q: Tensor, kv: Tensor) -> Tensor:
    """q: (B, N, C) queries, kv: (B, M, 2C) keys|values -> (B, N, C) =
    softmax(q k^T * scale) v per head, over tiles of queries."""
    B, N, C = q.shape
    h, d = attn.num_heads, attn.head_dim
    out = q.new_empty(B, N, C)
    for b in range(B):
        kv_b = kv[b].view(-1, 2, h, d)
        k_t = (kv_b[:, 0] * attn.scale).permute(1, 2, 0).contiguous()  # (h, d, M)
        v = kv_b[:, 1].transpose(0, 1).contiguous()  # (h, M, d)
        tiled_attention(q[b], k_t, v, out[b])
    return out


def _attend_folded(attn: SpatialReductionAttention, x: Tensor, kv: Tensor) -> Tensor:
    """``q`` and ``proj`` folded into the (few) keys and values, so the (N, C) x (C, C)
    projections of every token are not computed.
    x: (B, N, C) tokens, kv: (B, M, 2C) -> (B, N, C) = proj(attention(q(x), k, v)).

    With Wq_h (d, C) the rows of ``q.weight`` and Wp_h (C, d) the columns of
    ``proj.weight`` of head h, and s the scale:
    sum_h softmax((x Wq_h^T + bq_h) k_h^T s) v_h Wp_h^T + bp
        = [softmax_h(x (s k_h Wq_h)^T + s k_h bq_h)]_h [v_h Wp_h^T]_h + bp,
    one matmul for the scores of all heads side by side, one for the output (the folded
    keys and values are computed in fp32)."""
    B, N, C = x.shape
    h, d = attn.num_heads, attn.head_dim
    M = kv.shape[1]
    out = x.new_empty(B, N, C)
    wq = attn.q.weight.float().view(h, d, C)
    bq = None if attn.q.bias is None else attn.q.bias.float().view(h, d, 1)
    wp_t = attn.proj.weight.float().view(C, h, d).permute(1, 2, 0)  # (h, d, C)
    bp = None if attn.proj.bias is None else attn.proj.bias.float()
    for b in range(B):
        kv_b = kv[b].float().view(M, 2, h, d).permute(1, 2, 0, 3)  # (2, h, M, d)
        k, v = kv_b[0] * attn.scale, kv_b[1]
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
