"""Inference fast path: oneDNN kernels with the bias and activation fused into the matmul or
convolution, so the wide MLP activations are written once instead of three times.

The fused kernels have no autograd formula, so they run only where no gradient is needed
(``torch.no_grad()`` / ``inference_mode``) on CPU tensors in fp32 or bf16; everything else
(training, ``with_cp``, other devices and dtypes) takes the plain ``F.linear``/``F.conv2d``
path. Under ``torch.autocast('cpu', dtype=torch.bfloat16)`` the fused kernels run in bf16,
with the weights cast once per weight version (autocast would cast them on every call).
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


def fused_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype the fused kernels should run in for ``x``, or None to use the plain ops."""
    if (not _enabled or not FUSED_AVAILABLE or torch.is_grad_enabled()
            or x.device.type != 'cpu'):
        return None
    dtype = torch.get_autocast_dtype('cpu') if torch.is_autocast_enabled('cpu') else x.dtype
    return dtype if dtype in FUSED_DTYPES else None


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


def linear_act(x: Tensor, layer: nn.Linear, act: str = 'none') -> Tensor:
    """``act(layer(x))`` for x of shape (..., C_in) -> (..., C_out)."""
    post_op, algorithm, reference = ACTIVATIONS[act]
    dtype = fused_dtype(x)
    if dtype is None:
        return reference(layer(x))
    w = _cast(layer.weight, dtype, layer, 'weight')
    b = _cast(layer.bias, dtype, layer, 'bias')
    return _MKLDNN._linear_pointwise(x.to(dtype), w, b, post_op, [], algorithm)


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
