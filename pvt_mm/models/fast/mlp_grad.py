"""Training the PVT MLP on the CPU fast path: banded forward, banded recomputing backward.

The forward is the inference path (fused oneDNN kernels over row bands; only the MLP input is
saved). The backward recomputes each band's hidden activations and takes its gradients, so the
hidden activations (``mlp_ratio`` x wider than the tokens) never exist whole: with glibc's
allocator each 30+ MiB activation is a fresh mmap whose pages fault in on every step, which
cost about as much as the arithmetic around it. One extra, cache-resident pass of ``fc1`` (and
of the depthwise conv) pays for that.

In fp32 the backward is written out over each image's bands in the forward's token-major
layout (tokens x channels; the depthwise conv reads it as a channels-last map, where oneDNN's
depthwise kernels ran ~10x faster than on channels-first): all four weight-shaped products
are oneDNN matmuls (MKL's weight gradient reaches about half their speed on these skinny
shapes); other dtypes (bf16 autocast) recompute each band with autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layers.mlp import Mlp
from ..layers.shape import HW
from .bands import halo, mlp_banded, mlp_bands, mlp_rows
from .fused import OneDNNKernels, matmul_nt

_ops = torch.ops.aten


class BandedMlpFunction(torch.autograd.Function):
    """``mlp(x, hw)`` with the banded forward and recomputing backward described above.

    apply(x (B, N, C), hw, mlp, dtype, *mlp.parameters()) -> (B, N, C), with ``dtype`` the
    oneDNN training path's kernel dtype (:mod:`.exec_path`), ``mlp`` a stock
    :class:`~pvt_mm.models.layers.Mlp`.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type='cpu')
    def forward(ctx, x: Tensor, hw: HW, mlp: Mlp, dtype: torch.dtype, *params: Tensor
                ) -> Tensor:
        ctx.save_for_backward(x)
        ctx.hw, ctx.mlp, ctx.dtype = hw, mlp, dtype
        return mlp_banded(mlp, x, hw, dtype)

    @staticmethod
    @torch.amp.custom_bwd(device_type='cpu')
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, = ctx.saved_tensors
        mlp, hw = ctx.mlp, ctx.hw
        params = list(mlp.parameters())
        need_x = ctx.needs_input_grad[0]
        need = [i for i, n in enumerate(ctx.needs_input_grad[4:]) if n]
        explicit = (x.dtype == grad.dtype == torch.float32
                    and not torch.is_autocast_enabled('cpu')
                    and all(p.dtype == torch.float32 for p in params))
        run = _backward_explicit if explicit else _backward_autograd
        dx, dparams = run(mlp, x.detach(), grad, hw, need_x, [params[i] for i in need],
                          ctx.dtype)
        out: list[Tensor | None] = [None] * len(params)
        for i, g in zip(need, dparams):
            out[i] = g
        return (dx, None, None, None, *out)


def _backward_autograd(mlp: Mlp, x: Tensor, grad: Tensor, hw: HW, need_x: bool,
                       params: list[Tensor], dtype: torch.dtype
                       ) -> tuple[Tensor | None, list[Tensor]]:
    """Any dtype: recompute each band (all images at once) with autograd, on the oneDNN
    training path's kernels in ``dtype``."""
    B, N, C = x.shape
    H, W = hw
    rows, grad_rows = x.view(B, H, W, C), grad.view(B, H, W, -1)
    dx = torch.zeros_like(rows) if need_x else None
    dparams: list[Tensor] = []
    itemsize = dtype.itemsize  # the forward's band plan
    kernels = OneDNNKernels(dtype, autograd=True)
    with torch.enable_grad():
        for band in mlp_bands(mlp, hw, B * W * itemsize):
            xs = rows[:, band.read].requires_grad_(need_x)
            out = mlp_rows(mlp, xs, band.keep, kernels)
            grads = torch.autograd.grad(out, ([xs] if need_x else []) + params,
                                        grad_rows[:, band.own])
            if dx is not None:
                dx[:, band.read] += grads[0]
                grads = grads[1:]
            dparams = list(grads) if not dparams else [a.add_(g) for a, g in zip(dparams, grads)]
    return (None if dx is None else dx.view(B, N, C)), dparams


def _backward_explicit(mlp: Mlp, x: Tensor, grad: Tensor, hw: HW, need_x: bool,
                       params: list[Tensor], dtype: torch.dtype
                       ) -> tuple[Tensor | None, list[Tensor]]:
    """fp32: each image's bands in the forward's token-major layout, products through oneDNN.

    A band is T tokens x channels; the depthwise conv sees it as a channels-last map (oneDNN's
    depthwise kernels ran ~10x faster on that layout than on channels-first). Weight
    gradients are ``matmul_nt`` with a transposed right operand (read in place by oneDNN; a
    transposed left one would be copied).
    """
    B, N, C = x.shape
    H, W = hw
    fc1, fc2, conv = mlp.fc1, mlp.fc2, mlp.dwconv
    w1, w2 = fc1.weight.detach(), fc2.weight.detach()  # (hidden, C), (C, hidden)
    w1_t, w2_t = w1.t().contiguous(), w2.t().contiguous()
    hidden = w1.shape[0]
    acc = {p: torch.zeros_like(p) for p in mlp.parameters()}
    x, grad = x.contiguous(), grad.contiguous()  # oneDNN is slow on strided right operands
    dx = (torch.zeros_like(x) if halo(mlp) else torch.empty_like(x)) if need_x else None
    for b in range(B):
        x_img, g_img = x[b].view(H, W, C), grad[b].view(H, W, C)
        for read, keep, own in mlp_bands(mlp, hw, W * x.element_size()):
            rows_in = read.stop - read.start
            x_in = x_img[read].reshape(-1, C)  # (T_in, C), a view
            g_out = g_img[own].reshape(-1, C)  # (T_out, C)
            h = matmul_nt(x_in, w1)  # (T_in, hidden)
            if fc1.bias is not None:
                h += fc1.bias.detach()
            h_act = h.relu() if mlp.relu is not None else h
            if conv is not None:
                dw = conv.dwconv
                h4 = h_act.view(1, rows_in, W, hidden).permute(0, 3, 1, 2)  # channels-last
                c = F.conv2d(h4, dw.weight.detach(), dw.bias.detach(), padding=dw.padding,
                             groups=hidden).permute(0, 2, 3, 1)[0, keep].reshape(-1, hidden)
            else:
                c = h_act
            a = F.gelu(c)  # (T_out, hidden)
            acc[fc2.weight] += matmul_nt(g_out.t().contiguous(), a.t())
            if fc2.bias is not None:
                acc[fc2.bias] += g_out.sum(0)
            dc = matmul_nt(g_out, w2_t)  # (T_out, hidden) = g_out @ w2
            if conv is None:
                dh = _ops.gelu_backward.grad_input(dc, c, grad_input=dc)
            else:  # the conv's output grad, zero on the halo rows
                dc4 = h.new_empty(rows_in, W, hidden)
                dc4[:keep.start].zero_()
                dc4[keep.stop:].zero_()
                _ops.gelu_backward.grad_input(dc, c, grad_input=dc4[keep].view(-1, hidden))
                dh4, dweight, dbias = _ops.convolution_backward(
                    dc4[None].permute(0, 3, 1, 2), h4, dw.weight, [hidden], list(dw.stride),
                    list(dw.padding), list(dw.dilation), False, [0, 0], hidden,
                    [True, True, dw.bias is not None])
                acc[dw.weight] += dweight
                if dbias is not None:
                    acc[dw.bias] += dbias
                dh = dh4.permute(0, 2, 3, 1).reshape(-1, hidden)  # (T_in, hidden)
            if mlp.relu is not None:
                dh = dh.mul_(h > 0)
            # dW1^T = x_in^T @ dh: oneDNN copies a transposed LEFT operand, not a right one
            acc[fc1.weight] += matmul_nt(x_in.t().contiguous(), dh.t()).t()
            if fc1.bias is not None:
                acc[fc1.bias] += dh.sum(0)
            if dx is not None:
                d = matmul_nt(dh, w1_t).view(rows_in, W, C)  # dh @ w1
                dst = dx[b].view(H, W, C)[read]
                if halo(mlp):
                    dst += d
                else:
                    dst.copy_(d)
    return dx, [acc[p] for p in params]
