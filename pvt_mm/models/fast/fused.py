"""CPU fast paths through oneDNN: bias and activation fused into the matmul or convolution.

The layers use these kernels only on the oneDNN execution paths (:mod:`.exec_path`), chosen
once per backbone forward:

* inference (no autograd), fp32 or bf16 (autocast's dtype): linears and the depthwise conv run
  as oneDNN kernels with the bias and activation fused, so the wide MLP activations are written
  once instead of three times; under bf16 autocast the weights are cast once per weight
  version (autocast would cast them on every call);
* training (autograd): linears run as :class:`_OneDNNLinear`: oneDNN for the forward and the
  input gradient (2-3x MKL's speed for PVT's skinny token x channel shapes on the machines we
  measured), MKL for the weight gradient; activations and the conv stay plain ops there.
"""
from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_MKLDNN = torch.ops.mkldnn
FUSED_AVAILABLE = (torch.backends.mkldnn.is_available()
                   and hasattr(_MKLDNN, '_linear_pointwise')
                   and hasattr(_MKLDNN, '_convolution_pointwise'))
# bf16 where oneDNN has bf16 kernels on this CPU (AVX-512 or newer; an AVX2-only CPU has none,
# and its bf16 primitives fail to build): elsewhere bf16 autocast runs the reference layers
BF16_AVAILABLE = FUSED_AVAILABLE and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
FUSED_DTYPES = (torch.float32, torch.bfloat16) if BF16_AVAILABLE else (torch.float32,)
# activation name -> (oneDNN post-op, its algorithm, the reference op)
ACTIVATIONS = {
    'none': ('none', '', lambda t: t),
    'gelu': ('gelu', 'none', F.gelu),  # exact (erf) GELU, as nn.GELU()
    'relu': ('relu', '', F.relu),
}


_fused_allowed = True  # only changed by the deprecated set_fused_kernels


def fused_kernels_allowed() -> bool:
    """False after the deprecated ``set_fused_kernels(False)`` (read by :mod:`.exec_path`)."""
    return _fused_allowed


def set_fused_kernels(enabled: bool) -> None:
    """Deprecated: use the backbone option ``fast_kernels`` (``model.fast_kernels = False``).

    Globally allows (default) or forbids the oneDNN paths of every model."""
    global _fused_allowed
    warnings.warn('set_fused_kernels is deprecated; set the backbone option fast_kernels '
                  'instead', DeprecationWarning, stacklevel=2)
    _fused_allowed = bool(enabled)


def cached_cast(t: Tensor | None, dtype: torch.dtype, owner: nn.Module, name: str,
                layout: Callable[[Tensor], Tensor] | None = None) -> Tensor | None:
    """``t`` in ``dtype``, rearranged by ``layout`` if given (e.g. a native kernel's weight
    blocks); the copy is cached on ``owner`` under ``name`` until the weight changes."""
    if t is None or (t.dtype == dtype and layout is None):
        return t
    key = (dtype, t.data_ptr(), t._version)
    cache = owner.__dict__.setdefault('_fused_cast_cache', {})
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        w = t.detach().to(dtype)
        hit = cache[name] = (key, w if layout is None else layout(w))
    return hit[1]


class _OneDNNLinear(torch.autograd.Function):
    """``x @ weight.T + bias`` for x (..., C_in); oneDNN forward and input gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _MKLDNN._linear_pointwise(x, weight, bias, 'none', [], '')

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _MKLDNN._linear_pointwise(grad, weight.t().contiguous(), None, 'none', [], '')
        if ctx.needs_input_grad[1]:
            dw = g.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum(0)
        return dx, dw, db


def matmul_nt(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ b.T [+ bias]`` for a (n, k), b (m, k), bias (m,) through oneDNN (fast-path
    dtypes, no autograd)."""
    return _MKLDNN._linear_pointwise(a, b, bias, 'none', [], '')


class OneDNNKernels(NamedTuple):
    """The linear and conv of one oneDNN path: in ``dtype``; ``autograd``: training path."""

    dtype: torch.dtype
    autograd: bool

    def linear(self, x: Tensor, layer: nn.Linear, act: str = 'none') -> Tensor:
        """``act(layer(x))`` for x (..., C_in) -> (..., C_out)."""
        post_op, algorithm, reference = ACTIVATIONS[act]
        dtype = self.dtype
        if self.autograd:
            bias = None if layer.bias is None else layer.bias.to(dtype)
            return reference(_OneDNNLinear.apply(x.to(dtype), layer.weight.to(dtype), bias))
        w = cached_cast(layer.weight, dtype, layer, 'weight')
        b = cached_cast(layer.bias, dtype, layer, 'bias')
        return _MKLDNN._linear_pointwise(x.to(dtype), w, b, post_op, [], algorithm)

    def conv(self, x: Tensor, conv: nn.Conv2d, act: str = 'none') -> Tensor:
        """``act(conv(x))`` for an NCHW map (channels-last strides preferred)."""
        post_op, algorithm, reference = ACTIVATIONS[act]
        if self.autograd or not isinstance(conv.padding, tuple):
            return reference(conv(x))
        w = cached_cast(conv.weight, self.dtype, conv, 'weight')
        b = cached_cast(conv.bias, self.dtype, conv, 'bias')
        return _MKLDNN._convolution_pointwise(
            x.to(self.dtype), w, b, list(conv.padding), list(conv.stride),
            list(conv.dilation), conv.groups, post_op, [], algorithm)
