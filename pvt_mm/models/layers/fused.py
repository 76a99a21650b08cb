"""CPU fast paths through oneDNN: bias and activation fused into the matmul or convolution.

* Without autograd (``torch.no_grad()`` / ``inference_mode``), on CPU tensors in fp32 or bf16,
  linears and the depthwise conv run as oneDNN kernels with the bias and activation fused, so
  the wide MLP activations are written once instead of three times. Under
  ``torch.autocast('cpu', dtype=torch.bfloat16)`` they run in bf16, with the weights cast once
  per weight version (autocast would cast them on every call).
* With autograd on CPU, linears run as :class:`_OneDNNLinear`: oneDNN for the forward and the
  input gradient (2-3x MKL's speed for PVT's skinny token x channel shapes on the machines we
  measured), MKL for the weight gradient. Activations stay separate ops there.
* Everything else (other devices and dtypes, builds without oneDNN) takes the plain
  ``F.linear`` / ``F.conv2d`` path, which is also the reference in the tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_MKLDNN = torch.ops.mkldnn
FUSED_AVAILABLE = (torch.backends.mkldnn.is_available()
                   and hasattr(_MKLDNN, '_linear_pointwise')
                   and hasattr(_MKLDNN, '_convolution_pointwise'))
FUSED_DTYPES = (torch.float32, torch.bfloat16)
# activation name -> (oneDNN post-op, its algorithm, the reference op)
ACTIVATIONS = {
    'none': ('none', '', lambda t: t),
    'gelu': ('gelu', 'none', F.gelu),  # exact (erf) GELU, as nn.GELU()
    'relu': ('relu', '', F.relu),
}
_enabled = True


def set_fused_kernels(enabled: bool) -> None:
    """Globally allow (default) or forbid the fused inference kernels (for A/B checks)."""
    global _enabled
    _enabled = bool(enabled)


def _onednn_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype oneDNN kernels would run in for ``x`` (autocast's, else x's), or None when
    they cannot serve it (disabled, no oneDNN, not a CPU tensor, unsupported dtype)."""
    if not _enabled or not FUSED_AVAILABLE or x.device.type != 'cpu':
        return None
    dtype = torch.get_autocast_dtype('cpu') if torch.is_autocast_enabled('cpu') else x.dtype
    return dtype if dtype in FUSED_DTYPES else None


def fused_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype of the no-autograd fused kernels for ``x``, or None to use the plain ops."""
    return None if torch.is_grad_enabled() else _onednn_dtype(x)


def _cast(t: Tensor | None, dtype: torch.dtype, owner: nn.Module, name: str) -> Tensor | None:
    """``t`` in ``dtype``; a cast copy is cached on ``owner`` until the weight changes."""
    if t is None or t.dtype == dtype:
        return t
    key = (dtype, t.data_ptr(), t._version)
    cache = owner.__dict__.setdefault('_fused_cast_cache', {})
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        hit = cache[name] = (key, t.detach().to(dtype))
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


def linear_act(x: Tensor, layer: nn.Linear, act: str = 'none') -> Tensor:
    """``act(layer(x))`` for x of shape (..., C_in) -> (..., C_out)."""
    post_op, algorithm, reference = ACTIVATIONS[act]
    dtype = _onednn_dtype(x)
    if dtype is None or layer.weight.dtype not in FUSED_DTYPES:
        return reference(layer(x))
    if torch.is_grad_enabled():
        bias = None if layer.bias is None else layer.bias.to(dtype)
        return reference(_OneDNNLinear.apply(x.to(dtype), layer.weight.to(dtype), bias))
    w = _cast(layer.weight, dtype, layer, 'weight')
    b = _cast(layer.bias, dtype, layer, 'bias')
    return _MKLDNN._linear_pointwise(x.to(dtype), w, b, post_op, [], algorithm)


def matmul_nt(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b.T`` for a (n, k), b (m, k) through oneDNN (fast-path dtypes, no autograd)."""
    return _MKLDNN._linear_pointwise(a, b, None, 'none', [], '')


def conv_act(x: Tensor, conv: nn.Conv2d, act: str = 'none') -> Tensor:
    """``act(conv(x))`` for an NCHW map (channels-last strides preferred)."""
    post_op, algorithm, reference = ACTIVATIONS[act]
    dtype = fused_dtype(x)
    if dtype is None or not isinstance(conv.padding, tuple):
        return reference(conv(x))
    w = _cast(conv.weight, dtype, conv, 'weight')
    b = _cast(conv.bias, dtype, conv, 'bias')
    return _MKLDNN._convolution_pointwise(x.to(dtype), w, b, list(conv.padding),
                                          list(conv.stride), list(conv.dilation), conv.groups,
                                          post_op, [], algorithm)
