"""ONNX export of PVT backbones and of whole detectors / segmentors up to their raw outputs.

The graph is exported by ``torch.onnx.export`` on one of :data:`EXPORTERS` (the TorchScript
tracer, ``dynamo=False``, or torch.export + onnxscript, ``dynamo=True``) with dynamic batch,
height and width. Tracing makes
the backbone take its reference path by itself (:mod:`pvt_mm.models.fast.exec_path`): plain
ops, every size read from tensor shapes (v1's position-embedding resize, v2's ceil-mode grids,
PVTv2-li's 7x7 pooling as matmuls), so ONNX Runtime and OpenVINO run it at any input size.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.runtime import build_from_config, read_model_config
from ..loading.checkpoint import read_checkpoint, resolve_checkpoint
from ..models.backbones import build_pvt
from .ops import onnx_translations

DEFAULT_OPSET = 17  # the first with LayerNormalization
DYNAMO_MIN_OPSET = 18  # the dynamo exporter's onnxscript functions start at opset 18
INPUT_NAME = 'image'
# 'torchscript': torch.onnx.export(dynamo=False), deprecated by torch since 2.9 but still
# shipped; 'dynamo': torch.export + onnxscript (needs onnxscript, onnx_ir:
# requirements/deploy.txt)
EXPORTERS = ('torchscript', 'dynamo')
DEFAULT_EXPORTER = 'torchscript'


@contextlib.contextmanager
def _export_warnings_filtered() -> Iterator[None]:
    """Warnings that exporting our graphs raises by design, hidden by what they are: the
    tracer's notes about Python-side size arithmetic (the sizes that matter are read at run
    time), torch's deprecation notices of the TorchScript exporter and of the helper it calls
    itself (the exporter is chosen explicitly), and a pytree deprecation raised inside
    torch.export."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        warnings.filterwarnings('ignore', category=DeprecationWarning,
                                message=r'.*TorchScript-based ONNX export')
        warnings.filterwarnings('ignore', category=DeprecationWarning, module=r'torch\.onnx',
                                message='The feature will be removed')  # its own logging
        warnings.filterwarnings('ignore', category=FutureWarning,
                                message=r'`isinstance\(treespec, LeafSpec\)` is deprecated')
        yield


def torch_onnx_export(model: nn.Module, x: Tensor, out: Path, input_name: str,
                      output_names: Sequence[str], dynamic_axes: dict[str, dict[int, str]],
                      opset: int, exporter: str = DEFAULT_EXPORTER) -> None:
    """``torch.onnx.export`` of ``model(x)`` on the chosen exporter.

    ``dynamic_axes``: {input or output name: {axis: name}} (TorchScript's form); the dynamo
    exporter takes the input's axes as ``Dim.DYNAMIC`` and infers the outputs'. Raises
    ValueError for an unknown exporter, ImportError naming the packages the dynamo exporter
    needs."""
    if exporter not in EXPORTERS:
        raise ValueError(f'exporter must be one of {EXPORTERS}, got {exporter!r}')
    with _export_warnings_filtered(), torch.no_grad():
        if exporter == 'torchscript':
            torch.onnx.export(model, (x,), str(out), dynamo=False, input_names=[input_name],
                              output_names=list(output_names), dynamic_axes=dynamic_axes,
                              opset_version=opset, do_constant_folding=True)
            return
        try:
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise ImportError('the dynamo exporter needs onnxscript and onnx_ir (pip install '
                              '-r requirements/deploy.txt), or use --exporter torchscript'
                              ) from e
        from torch.export import Dim

        dims = {axis: Dim.DYNAMIC for axis in dynamic_axes.get(input_name, {})}
        program = torch.onnx.export(
            model, (x,), dynamo=True, input_names=[input_name],
            output_names=list(output_names), dynamic_shapes=(dims,),
            opset_version=max(opset, DYNAMO_MIN_OPSET), verbose=False,
            custom_translation_table=onnx_translations())
        _register_orphan_constants(program.model)
        program.save(str(out))
        _name_input_dims(out, dynamic_axes.get(input_name, {}))


def _register_orphan_constants(model: Any) -> int:
    """Register again the constants that onnxscript's optimizer left without a definition;
    returns how many.

    onnxscript 0.7's rewrite of ``Min(Max(x, lo), hi)`` into ``Clip`` (what ``clamp`` becomes)
    names the new bounds ``{x}_min`` / ``{x}_max``: a second such rewrite on the same ``x``
    (mmdet's ``inverse_sigmoid`` on the same reference points in the decoder and in the head
    of Deformable DETR / DINO) overwrites the first bounds in the graph's initializers, and the
    first ``Clip`` reads a value nothing defines (the checker: 'not output of any previous
    nodes'). Each such value still holds its constant: it is registered under a free name."""
    graph, count = model.graph, 0
    for node in graph:
        for value in node.inputs:
            if value is None or value.producer() is not None or value.is_graph_input() \
                    or value.const_value is None or graph.initializers.get(value.name) is value:
                continue
            base = value.name or 'constant'
            name, i = base, 0
            while name in graph.initializers and graph.initializers[name] is not value:
                i += 1
                name = f'{base}_{i}'
            value.name = name
            graph.register_initializer(value)
            count += 1
    return count


def _name_input_dims(path: Path, names: dict[int, str]) -> None:
    """Rename the dynamo exporter's symbols of the input's dynamic axes (``s0``, ``s73``) to
    ``names`` ({axis: name}, e.g. 'height') wherever they appear as whole dimensions."""
    import onnx
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    rename = {dims[a].dim_param: n for a, n in names.items()
              if a < len(dims) and dims[a].dim_param}
    if not rename:
        return
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]
    onnx.save(model, str(path))


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
                opset: int = DEFAULT_OPSET, batch_size: int | None = None,
                names: Sequence[str] | None = None,
                exporter: str = DEFAULT_EXPORTER) -> ExportResult:
    """Trace ``model`` (eval mode, fp32, CPU) on a random (batch_size, 3, H, W) input and write
    an ONNX graph with dynamic batch, height and width (input and every 4-D output).
    ``batch_size`` None: 1 (TorchScript) or 2 (dynamo: a batch-1 example would specialise the
    batch dimension to 1)."""
    if batch_size is None:
        batch_size = 2 if exporter == 'dynamo' else 1
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
    torch_onnx_export(model, x, out, INPUT_NAME, names, dynamic, opset, exporter)
    check_onnx_graph(out)
    return ExportResult(out, INPUT_NAME, tuple(names), tuple(x.shape))


def backbone_output_names(model: nn.Module) -> list[str]:
    return [f'stage{i}' for i in model.out_indices]


def build_backbone_for_export(arch: str, checkpoint: str | None = None, **kwargs: Any
                              ) -> nn.Module:
    """pvt_mm's backbone ``arch`` (random weights, or ``checkpoint`` in any layout that
    ``init_cfg=dict(type='Pretrained')`` reads)."""
    init_cfg = None if checkpoint is None else dict(type='Pretrained', checkpoint=checkpoint)
    model = build_pvt(arch, init_cfg=init_cfg, **kwargs)
    if checkpoint is not None:
        model.init_weights()
    return model.eval()


def build_model_for_export(config: str | Path, checkpoint: str | None = None,
                           cfg_options: dict | None = None) -> RawOutputs:
    """A config's single-stage detector or segmentor wrapped in :class:`RawOutputs`, with the
    weights of a whole-model ``checkpoint`` (strict) or random ones (heads' own init)."""
    cfg = read_model_config(config, cfg_options)
    model = build_from_config(cfg, init=True)
    if checkpoint is not None:
        state = read_checkpoint(resolve_checkpoint(checkpoint))
        state = state.get('state_dict', state)
        model.load_state_dict(state, strict=True)
    return RawOutputs(model.eval())


def export_arch(arch: str, out: str | Path, checkpoint: str | None = None,
                opset: int = DEFAULT_OPSET, shape: Sequence[int] = (224, 224),
                exporter: str = DEFAULT_EXPORTER, **kwargs: Any) -> ExportResult:
    """Export backbone ``arch``: (B, 3, H, W) image -> ``stage{i}`` NCHW maps."""
    model = build_backbone_for_export(arch, checkpoint, **kwargs)
    return export_onnx(model, out, shape, opset, names=backbone_output_names(model),
                       exporter=exporter)


def export_config(config: str | Path, out: str | Path, checkpoint: str | None = None,
                  opset: int = DEFAULT_OPSET, shape: Sequence[int] = (224, 224),
                  cfg_options: dict | None = None,
                  exporter: str = DEFAULT_EXPORTER) -> ExportResult:
    """Export a config's single-stage detector / segmentor up to its raw head outputs.

    Input: the batch after the config's data preprocessor (RGB, normalised, padded to its
    ``pad_size_divisor``). Outputs: :func:`output_names` of ``model._forward``."""
    model = build_model_for_export(config, checkpoint, cfg_options)
    with torch.no_grad():
        names = output_names(model.model._forward(torch.zeros(1, 3, *shape)))
    return export_onnx(model, out, shape, opset, names=names, exporter=exporter)
