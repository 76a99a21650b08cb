"""Training the PVT MLP on the CPU fast path: banded forward, banded recomputing backward.

The forward is the inference path (fused oneDNN kernels over row bands; only the MLP input is
saved). The backward recomputes each band's hidden activations and takes its gradients, so the
hidden activations (``mlp_ratio`` x wider than the tokens) never exist whole: with glibc's
allocator each 30+ MiB activation is a fresh mmap whose pages fault in on every step, which
cost about as much as the arithmetic around it. One extra, cache-resident pass of ``fc1`` (and
of the depthwise conv) pays for that.

In fp32 the backward is written out over each image's bands in a channels-first layout
(hidden x tokens), where all four weight-shaped products are oneDNN matmuls on contiguous
operands (MKL's weight gradient reaches about half their speed on these skinny shapes); other
dtypes (bf16 autocast) recompute each band with autograd.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .fused import matmul_nt
from .shape import HW

if TYPE_CHECKING:
    from .mlp import Mlp

_ops = torch.ops.aten


class BandedMlpFunction(torch.autograd.Function):
    """``mlp(x, hw)`` with the banded forward and recomputing backward described above.

    apply(x (B, N, C), hw, mlp, *mlp.parameters()) -> (B, N, C).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type='cpu')
    def forward(ctx, x: Tensor, hw: HW, mlp: Mlp, *params: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        ctx.hw, ctx.mlp = hw, mlp
        return mlp._forward_banded(x, hw)

    @staticmethod
    @torch.amp.custom_bwd(device_type='cpu')
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, = ctx.saved_tensors
        mlp, hw = ctx.mlp, ctx.hw
        params = list(mlp.parameters())
        need_x = ctx.needs_input_grad[0]
        need = [i for i, n in enumerate(ctx.needs_input_grad[3:]) if n]
        explicit = (x.dtype == grad.dtype == torch.float32
                    and not torch.is_autocast_enabled('cpu')
                    and all(p.dtype == torch.float32 for p in params))
        run = _backward_explicit if explicit else _backward_autograd
        dx, dparams = run(mlp, x.detach(), grad, hw, need_x, [params[i] for i in need])
        out: list[Tensor | None] = [None] * len(params)
        for i, g in zip(need, dparams):
            out[i] = g
        return (dx, None, None, *out)


def _backward_autograd(mlp: Mlp, x: Tensor, grad: Tensor, hw: HW, need_x: bool,
                       params: list[Tensor]) -> tuple[Tensor | None, list[Tensor]]:
    """Any dtype: recompute each band (all images at once) with autograd."""
    B, N, C = x.shape
    H, W = hw
    rows, grad_rows = x.view(B, H, W, C), grad.view(B, H, W, -1)
    dx = torch.zeros_like(rows) if need_x else None
    dparams: list[Tensor] = []
    itemsize = (torch.get_autocast_dtype('cpu') if torch.is_autocast_enabled('cpu')
                else x.dtype).itemsize
    with torch.enable_grad():
        for band in mlp.bands(hw, B * W * itemsize):
            xs = rows[:, band.read].requires_grad_(need_x)
            out = mlp._rows(xs, band.keep)
            grads = torch.autograd.grad(out, ([xs] if need_x else []) + params,
                                        grad_rows[:, band.own])
            if dx is not None:
                dx[:, band.read] += grads[0]
                grads = grads[1:]
            dparams = list(grads) if not dparams else [a.add_(g) for a, g in zip(dparams, grads)]
    return (None if dx is None else dx.view(B, N, C)), dparams


def _backward_explicit(mlp: Mlp, x: Tensor, grad: Tensor, hw: HW, need_x: bool,
                       params: list[Tensor]) -> tuple[Tensor | None, list[Tensor]]:
    """fp32: each image's bands in (hidden, tokens) layout, products through oneDNN."""
    B, N, C = x.shape
    H, W = hw
    fc1, fc2, conv = mlp.fc1, mlp.fc2, mlp.dwconv
    w1, w2 = fc1.weight.detach(), fc2.weight.detach()
    w1_t, w2_t = w1.t().contiguous(), w2.t().contiguous()
    hidden = w1.shape[0]
    acc = {p: torch.zeros_like(p) for p in mlp.parameters()}
    x, grad = x.contiguous(), grad.contiguous()  # oneDNN is slow on strided right operands
    dx = (torch.zeros_like(x) if mlp.halo else torch.empty_like(x)) if need_x else None
    for b in range(B):
        x_img, g_img = x[b].view(H, W, C), grad[b].view(H, W, C)
        for read, keep, own in mlp.bands(hw, W * x.element_size()):
            rows_in = read.stop - read.start
            x_in = x_img[read].reshape(-1, C)  # (R_in*W, C), a view
            g_out = g_img[own].reshape(-1, C)  # (R_out*W, C)
            h = matmul_nt(w1, x_in)  # (hidden, R_in*W)
            if fc1.bias is not None:
                h += fc1.bias.detach()[:, None]
            h_act = h.relu() if mlp.relu is not None else h
            if conv is not None:  # depthwise conv on the (1, hidden, R_in, W) map
                dw = conv.dwconv
                h4 = h_act.view(1, hidden, rows_in, W)
                c = F.conv2d(h4, dw.weight.detach(), dw.bias.detach(), padding=dw.padding,
                             groups=hidden)[0, :, keep].reshape(hidden, -1)
            else:
                c = h_act
            a = F.gelu(c)
            acc[fc2.weight] += matmul_nt(g_out.t().contiguous(), a)
            if fc2.bias is not None:
                acc[fc2.bias] += g_out.sum(0)
            dc = matmul_nt(w2_t, g_out)  # (hidden, R_out*W)
            dc = _ops.gelu_backward.grad_input(dc, c, grad_input=dc)
            if conv is not None:
                dc4 = dc.new_zeros(1, hidden, rows_in, W)
                dc4[0, :, keep] = dc.view(hidden, -1, W)
                dh4, dweight, dbias = _ops.convolution_backward(
                    dc4, h4, dw.weight, [hidden], list(dw.stride), list(dw.padding),
                    list(dw.dilation), False, [0, 0], hidden, [True, True, dw.bias is not None])
                acc[dw.weight] += dweight
                if dbias is not None:
                    acc[dw.bias] += dbias
                dh = dh4.view(hidden, -1)
            else:
                dh = dc
            if mlp.relu is not None:
                dh = dh.mul_(h > 0)
            acc[fc1.weight] += matmul_nt(dh, x_in.t().contiguous())
            if fc1.bias is not None:
                acc[fc1.bias] += dh.sum(1)
            if dx is not None:
                dx_t = matmul_nt(w1_t, dh.t())  # (C, R_in*W)
                dst = dx[b].view(H, W, C)[read]
                if mlp.halo:
                    dst += dx_t.t().view(rows_in, W, C)
                else:
                    dst.copy_(dx_t.t().view(rows_in, W, C))
    return dx, [acc[p] for p in params]
