"""ONNX export of PVT backbones and of whole detectors / segmentors up to their raw outputs.

The graph is traced with ``torch.onnx.export(dynamo=False)`` (the TorchScript-based exporter:
the dynamo exporter needs ``onnxscript``) with dynamic batch, height and width. Tracing makes
the backbone take its reference path by itself (:mod:`pvt_mm.models.layers.exec_path`): plain
ops, every size read from tensor shapes (v1's position-embedding resize, v2's ceil-mode grids,
PVTv2-li's 7x7 pooling as matmuls), so ONNX Runtime and OpenVINO run it at any input size.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

DEFAULT_OPSET = 17  # the first with LayerNormalization
INPUT_NAME = 'image'


@dataclass(frozen=True)
class ExportResult:
    """An exported graph: its file, input and output names, and the traced input shape."""

    path: Path
    input_name: str
    output_names: tuple[str, ...]
    traced_shape: tuple[int, ...]


class RawOutputs(nn.Module):
    """An mmdet / mmseg model from its preprocessed input batch to its raw head outputs as a
    flat tuple: ``model._forward(image)`` (backbone, neck, head; no box decoding or NMS).

    forward: (B, 3, H, W) normalised image -> tuple of tensors (see :func:`output_names`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if hasattr(model, 'rpn_head') or hasattr(model, 'roi_head'):
            raise ValueError(f'{type(model).__name__} is a two-stage detector: its raw outputs '
                             'need NMS (RPN proposals) inside the graph; export it whole with '
                             '--end2end, or the backbone (--arch)')
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        return tuple(flatten_outputs(self.model._forward(image)))


def flatten_outputs(out: Any) -> list[Tensor]:
    """Nested tuples / lists of tensors -> a flat list, depth first."""
    if isinstance(out, Tensor):
        return [out]
    return [t for o in out for t in flatten_outputs(o)]


def output_names(out: Any, prefix: str = 'output') -> list[str]:
    """Names for :func:`flatten_outputs` of ``out``: ``output0``, or for a tuple of per-level
    lists (mmdet's dense heads: class scores, box deltas[, centerness]) ``output{k}_level{l}``."""
    if isinstance(out, Tensor):
        return [prefix]
    if len(out) and all(isinstance(o, Tensor) for o in out) and prefix != 'output':
        return [f'{prefix}_level{i}' for i in range(len(out))]
    return [n for i, o in enumerate(out) for n in output_names(o, f'{prefix}{i}')]


def check_onnx_graph(path: str | Path) -> set[str]:
    """Validate an exported graph; return its op types.

    Raises ValueError for an op outside the standard ONNX domain (e.g. ATen or oneDNN ops that
    only a PyTorch build has) or a Dropout in training mode."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(model)
    ops = set()
    for node in model.graph.node:
        if node.domain not in ('', 'ai.onnx') or not onnx.defs.has(node.op_type):
            raise ValueError(f'{path}: op {node.domain or "ai.onnx"}::{node.op_type} is not a '
                             'standard ONNX op (ONNX Runtime / OpenVINO cannot run it)')
        if node.op_type == 'Dropout' and len(node.input) > 2 and node.input[2]:
            raise ValueError(f'{path}: Dropout {node.name} has a training_mode input')
        ops.add(node.op_type)
    return ops


def export_onnx(model: nn.Module, out: str | Path, shape: Sequence[int] = (224, 224),
                opset: int = DEFAULT_OPSET, batch_size: int = 1,
                names: Sequence[str] | None = None) -> ExportResult:
    """Trace ``model`` (eval mode, fp32, CPU) on a random (batch_size, 3, H, W) input and write
    an ONNX graph with dynamic batch, height and width (input and every 4-D output)."""
    model = model.eval().float().cpu()
    x = torch.randn(batch_size, 3, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sample = model(x)
    names = list(names) if names is not None else output_names(sample)
    flat = flatten_outputs(sample)
    if len(names) != len(flat):
        raise ValueError(f'{len(names)} output names for {len(flat)} outputs')
    dynamic = {INPUT_NAME: {0: 'batch', 2: 'height', 3: 'width'}}
    for name, t in zip(names, flat):
        dynamic[name] = {0: 'batch', **({2: f'{name}_h', 3: f'{name}_w'} if t.dim() == 4 else {})}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TracerWarnings about Python-side size arithmetic
        torch.onnx.export(model, (x,), str(out), dynamo=False, input_names=[INPUT_NAME],
                          output_names=names, dynamic_axes=dynamic, opset_version=opset,
                          do_constant_folding=True)
    check_onnx_graph(out)
    return ExportResult(out, INPUT_NAME, tuple(names), tuple(x.shape))


def backbone_output_names(model: nn.Module) -> list[str]:
    return [f'stage{i}' for i in model.out_indices]


def build_backbone_for_export(arch: str, checkpoint: str | None = None, **kwargs: Any
                              ) -> nn.Module:
    """pvt_mm's backbone ``arch`` (random weights, or ``checkpoint`` in any layout that
    ``init_cfg=dict(type='Pretrained')`` reads)."""
    from ..analysis.models import build_backbone
    init_cfg = None if checkpoint is None else dict(type='Pretrained', checkpoint=checkpoint)
    model = build_backbone(arch, init_cfg=init_cfg, **kwargs)
    if checkpoint is not None:
        model.init_weights()
    return model.eval()


def build_model_for_export(config: str | Path, checkpoint: str | None = None,
                           cfg_options: dict | None = None) -> RawOutputs:
    """A config's single-stage detector or segmentor wrapped in :class:`RawOutputs`, with the
    weights of a whole-model ``checkpoint`` (strict) or random ones (heads' own init)."""
    from ..analysis.models import build_from_config, load_config
    cfg = load_config(config, cfg_options)
    model = build_from_config(cfg, init=True)
    if checkpoint is not None:
        from ..checkpoint import read_checkpoint, resolve_checkpoint
        state = read_checkpoint(resolve_checkpoint(checkpoint))
        state = state.get('state_dict', state)
        model.load_state_dict(state, strict=True)
    return RawOutputs(model.eval())


def export_arch(arch: str, out: str | Path, checkpoint: str | None = None,
                opset: int = DEFAULT_OPSET, shape: Sequence[int] = (224, 224),
                **kwargs: Any) -> ExportResult:
    """Export backbone ``arch``: (B, 3, H, W) image -> ``stage{i}`` NCHW maps."""
    model = build_backbone_for_export(arch, checkpoint, **kwargs)
    return export_onnx(model, out, shape, opset, names=backbone_output_names(model))


def export_config(config: str | Path, out: str | Path, checkpoint: str | None = None,
                  opset: int = DEFAULT_OPSET, shape: Sequence[int] = (224, 224),
                  cfg_options: dict | None = None) -> ExportResult:
    """Export a config's single-stage detector / segmentor up to its raw head outputs.

    Input: the batch after the config's data preprocessor (RGB, normalised, padded to its
    ``pad_size_divisor``). Outputs: :func:`output_names` of ``model._forward``."""
    model = build_model_for_export(config, checkpoint, cfg_options)
    with torch.no_grad():
        names = output_names(model.model._forward(torch.zeros(1, 3, *shape)))
    return export_onnx(model, out, shape, opset, names=names)
