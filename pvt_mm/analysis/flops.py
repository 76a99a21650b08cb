"""Parameters and FLOPs in the convention of the published PVT figures.

The official whai362/PVT ``get_flops.py`` counts with mmcv's ``get_model_complexity_info``, in
which one "FLOP" is one multiply-accumulate (MAC): a convolution costs its MACs plus one per
output element for the bias, a linear layer its MACs (bias not counted), a norm one per element
(two with an affine transform), a pooling one per input element, an upsampling one per output
element, a ReLU one per element; GELU, softmax and additions cost nothing. That counter only
sees modules, so the official script adds the attention matrix products by formula:
``2 * N * M * C`` per block (q k^T and attn v; N queries, M reduced keys, C channels). The
ImageNet figures are those of the classification model, i.e. with the classifier head.

Here the same rules are applied per aten op by PyTorch's dispatch-level ``FlopCounterMode``
with our formula table, so the attention products are counted whichever way they run (the fused
``scaled_dot_product_attention`` kernels on CPU / CUDA, its math fallback on the meta device,
or explicit matmuls), in any model (ours, mmdet's, timm's, whole detectors), and a backbone can
be counted on the meta device without computing (or allocating) anything.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import prod
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..arch import check_arch
from ..engine.runtime import build_from_config
from ..models.backbones import build_pvt
from .models import arch_spec, synthetic_batch

aten = torch.ops.aten
IMAGENET_CLASSES = 1000
IMAGENET_SIZE = (224, 224)
# ImageNet-1k GFLOPs at 224x224 as published (PVT v1 paper Table 2, PVTv2 paper Table 1 and
# the whai362/PVT README), attention products and classifier included, rounded to 0.1 G
PUBLISHED_IMAGENET_GFLOPS: dict[str, float] = {
    'tiny': 1.9, 'small': 3.8, 'medium': 6.7, 'large': 9.8,
    'b0': 0.6, 'b1': 2.1, 'b2': 4.0, 'b2_li': 3.9, 'b3': 6.9, 'b4': 10.1, 'b5': 11.8}
PUBLISHED_ROUNDING = 0.05  # half of the last published digit (figures given to 0.1)


# ---- per-op formulas (shapes in, multiply-accumulates out) -------------------------------------
def _mm(a: Sequence[int], b: Sequence[int], *_: Any, **__: Any) -> int:
    return a[0] * a[1] * b[1]


def _addmm(_bias: Any, a: Sequence[int], b: Sequence[int], *_: Any, **__: Any) -> int:
    return _mm(a, b)  # the bias add is free, as in mmcv's Linear rule


def _bmm(a: Sequence[int], b: Sequence[int], *_: Any, **__: Any) -> int:
    return a[0] * a[1] * a[2] * b[2]


def _baddbmm(_bias: Any, a: Sequence[int], b: Sequence[int], *_: Any, **__: Any) -> int:
    return _bmm(a, b)


def _conv(x: Sequence[int], w: Sequence[int], bias: Any, _stride: Any, _padding: Any,
          _dilation: Any, transposed: bool, *_: Any, out_shape: Sequence[int], **__: Any) -> int:
    # weight (C_out, C_in/g, k...) or, transposed, (C_in, C_out/g, k...): every output
    # (input, transposed) element takes prod(w[1:]) MACs; mmcv adds one per output for bias
    macs = prod(x if transposed else out_shape) * prod(w[1:])
    return macs + (prod(out_shape) if bias is not None else 0)


def _sdpa(q: Sequence[int], k: Sequence[int], v: Sequence[int], *_: Any, **__: Any) -> int:
    # q (..., L, E) k (..., S, E) v (..., S, Ev): q k^T then attn v
    return prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def _norm(x: Sequence[int], weight: Any, *_: Any, **__: Any) -> int:
    """Batch / group norm ``(input, weight, ...)``: one per element, two with affine."""
    return prod(x) * (2 if weight is not None else 1)


def _layer_norm(x: Sequence[int], _normalized_shape: Any, weight: Any, *_: Any,
                **__: Any) -> int:
    return _norm(x, weight)


def _per_input(x: Sequence[int], *_: Any, **__: Any) -> int:
    return prod(x)


def _per_output(*_: Any, out_shape: Sequence[int], **__: Any) -> int:
    return prod(out_shape)


COUNTED_POST_OPS = ('relu',)  # activations mmcv's rules count (one per element)


def _attr_index(args: Sequence[Any]) -> int:
    return next(i for i, a in enumerate(args) if isinstance(a, str))


def _fused_linear(x: Sequence[int], *args: Any, out_shape: Sequence[int], **__: Any) -> int:
    """oneDNN linear with a fused post-op: ``(X, W, B, attr, ...)`` or, binary,
    ``(X, other, W, B, attr, ...)``."""
    args = (x, *args)
    attr = _attr_index(args)
    w = args[attr - 2]
    return (prod(x[:-1]) * w[0] * w[1]
            + (prod(out_shape) if args[attr] in COUNTED_POST_OPS else 0))


def _fused_conv(x: Sequence[int], *args: Any, out_shape: Sequence[int], **__: Any) -> int:
    """oneDNN convolution with a fused post-op: ``(X, W, B, padding, stride, dilation,
    groups, attr, ...)`` or, binary, with ``other`` after X."""
    args = (x, *args)
    attr = _attr_index(args)
    w, bias = args[attr - 6], args[attr - 5]
    return (_conv(x, w, bias, None, None, None, False, out_shape=out_shape)
            + (prod(out_shape) if args[attr] in COUNTED_POST_OPS else 0))


MAC_FORMULAS: dict[Any, Callable[..., int]] = {
    torch.ops.mkldnn._linear_pointwise: _fused_linear,
    torch.ops.mkldnn._convolution_pointwise: _fused_conv,
    aten.mm: _mm, aten.addmm: _addmm, aten.bmm: _bmm, aten.baddbmm: _baddbmm,
    aten.convolution: _conv, aten._convolution: _conv,
    **{op: _sdpa for op in (aten._scaled_dot_product_flash_attention_for_cpu,
                            aten._scaled_dot_product_flash_attention,
                            aten._scaled_dot_product_efficient_attention,
                            aten._scaled_dot_product_cudnn_attention)},
    aten.native_layer_norm: _layer_norm,
    **{op: _norm for op in (aten.native_group_norm, aten.native_batch_norm,
                            aten._native_batch_norm_legit,
                            aten._native_batch_norm_legit_no_training)},
    **{op: _per_input for op in (aten._adaptive_avg_pool2d, aten.avg_pool2d, aten.max_pool2d,
                                 aten.max_pool2d_with_indices, aten.adaptive_max_pool2d,
                                 aten.relu, aten.relu_, aten.leaky_relu, aten.leaky_relu_,
                                 aten.elu, aten.elu_)},
    **{op: _per_output for op in (aten.upsample_bilinear2d, aten.upsample_nearest2d,
                                  aten.upsample_bicubic2d)},
}


# ---- counting --------------------------------------------------------------------------------
@dataclass
class Complexity:
    """Result of a count. ``flops`` are multiply-accumulates (the PVT papers' "FLOPs")."""

    flops: int
    params: int
    input_shape: tuple[int, ...]
    by_module: dict[str, int] = field(default_factory=dict)  # 'stages.0' -> MACs
    by_operator: dict[str, int] = field(default_factory=dict)  # 'bmm' -> MACs

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6


def count_params(model: nn.Module) -> int:
    """All parameters (trainable or not; shared ones once)."""
    return sum(p.numel() for p in model.parameters())


@contextmanager
def plain_path(model: nn.Module) -> Iterator[None]:
    """Autograd enabled with every parameter frozen: nothing builds a graph (no memory cost),
    but models take their plain (training) path rather than an inference-only fast path that
    may recompute (pvt_mm's banded MLP computes the depthwise conv's halo rows twice), so a
    count is the architecture's arithmetic, not the implementation's."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def count_complexity(model: nn.Module, *args: Any, **kwargs: Any) -> Complexity:
    """Run ``model(*args, **kwargs)`` on its plain path (:func:`plain_path`) and count its MACs
    with :data:`MAC_FORMULAS`.

    Works on real and on meta tensors. ``input_shape`` is that of the first tensor argument.
    """
    counter = FlopCounterMode(display=False, custom_mapping=MAC_FORMULAS)
    # only our formulas: torch's defaults count 2 FLOPs per MAC and skip norms / pools
    registry = {k: v for k, v in counter.flop_registry.items() if k in MAC_FORMULAS}
    # the mode decomposes every op whose overload is not a key before counting its packet;
    # listing the overloads keeps composite ops with a formula (upsample_nearest2d) whole
    for packet in list(registry):
        for name in packet.overloads():
            registry[getattr(packet, name)] = registry[packet]
    counter.flop_registry = registry
    with plain_path(model), counter:
        model(*args, **kwargs)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    by_module = {}
    for name, ops in counts.items():
        if name.startswith(root + '.'):
            by_module[name[len(root) + 1:]] = sum(ops.values())
    by_op = {str(op).split('.')[-1]: n for op, n in counts.get('Global', {}).items()}
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    return Complexity(flops=counter.get_total_flops(), params=count_params(model),
                      input_shape=tuple(first.shape) if first is not None else (),
                      by_module=by_module, by_operator=by_op)


@contextmanager
def params_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters and buffers on the meta device: nothing is
    allocated or initialised, while other tensors their constructors make stay real (the
    ``init_empty_weights`` technique of HF accelerate)."""
    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def param_to_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register_parameter(self, name, param)
        if param is not None:
            self._parameters[name] = type(param)(param.data.to('meta'),
                                                 requires_grad=param.requires_grad)

    def buffer_to_meta(self: nn.Module, name: str, tensor: torch.Tensor | None,
                       persistent: bool = True) -> None:
        register_buffer(self, name, tensor, persistent)
        if tensor is not None:
            self._buffers[name] = tensor.to('meta')

    nn.Module.register_parameter = param_to_meta  # type: ignore[method-assign]
    nn.Module.register_buffer = buffer_to_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


def imagenet_head_complexity(arch: str) -> tuple[int, int]:
    """(MACs, params) of the ImageNet classifier ``head = Linear(C4, 1000)`` on the pooled
    (v2) or class-token (v1) feature, per image, in mmcv's Linear rule (bias not counted)."""
    c4 = arch_spec(arch).embed_dims[-1]
    return c4 * IMAGENET_CLASSES, c4 * IMAGENET_CLASSES + IMAGENET_CLASSES


def backbone_complexity(arch: str, shape: Sequence[int] = IMAGENET_SIZE,
                        with_head: bool = False, attn_mode: str = 'sdpa') -> Complexity:
    """Params and MACs of pvt_mm's backbone ``arch`` for one (3, H, W) image, counted on the
    meta device. ``with_head`` adds the ImageNet classifier (the published ImageNet figures
    include it; the v1 class token and final norm are not modelled: < 0.5% of the total)."""
    arch = check_arch(arch)
    with params_on_meta():
        model = build_pvt(arch, attn_mode=attn_mode).eval()
    result = count_complexity(model, torch.empty(1, 3, *shape, device='meta'))
    if with_head:
        macs, params = imagenet_head_complexity(arch)
        result.flops += macs
        result.params += params
        result.by_module['head'] = macs
    return result


def config_complexity(cfg: Any, shape: Sequence[int]) -> Complexity:
    """Params and MACs of a config's detector / segmentor on one synthetic (3, H, W) image,
    as mmdet's and mmseg's get_flops tools measure it: the network forward in ``tensor`` mode
    after the config's data preprocessor (which may pad H and W), with real CPU tensors."""
    model = build_from_config(cfg).eval()
    data = model.data_preprocessor(synthetic_batch(model, cfg, shape), False)
    return count_complexity(model, data['inputs'], data['data_samples'], mode='tensor')


def stage_breakdown(result: Complexity, depth: int = 1) -> dict[str, int]:
    """MACs per module path cut to ``depth`` parts ('stages.0' has depth 2).

    A module only appears in the counter when it is called (``module(x)``); one whose
    ``forward`` is called directly (mmdet's heads) is summed from its called sub-modules.
    """
    recorded = result.by_module
    totals: dict[str, int] = {}
    for name, macs in recorded.items():
        parts = name.split('.')
        if len(parts) < depth:  # shallower than the cut: a row only if nothing below it is
            if any(n.startswith(name + '.') for n in recorded):
                continue
        elif any(a in recorded for a in _ancestors(name) if a.count('.') >= depth - 1):
            continue  # counted with its ancestor at or below the cut
        prefix = '.'.join(parts[:depth])
        totals[prefix] = totals.get(prefix, 0) + macs
    return totals


def _ancestors(name: str) -> list[str]:
    parts = name.split('.')
    return ['.'.join(parts[:i]) for i in range(1, len(parts))]


def format_complexity(result: Complexity, title: str, depth: int = 1) -> str:
    """A printable summary: input, params, MACs and the MACs of modules at ``depth``."""
    line = '=' * 60
    rows = [line, title, f'Input shape: {result.input_shape}',
            f'Params:      {result.mparams:.2f} M',
            f'FLOPs:       {result.gflops:.3f} G  (multiply-accumulates: the convention of the '
            'PVT papers and of mmcv / mmengine counters)']
    parts = stage_breakdown(result, depth)
    other = result.flops - sum(parts.values())
    if other:
        parts['(outside sub-modules)'] = other
    for name, macs in parts.items():
        share = 100 * macs / result.flops if result.flops else 0.
        rows.append(f'  {name:<28s} {macs / 1e9:8.3f} G  {share:5.1f}%')
    rows.append(line)
    return '\n'.join(rows)
