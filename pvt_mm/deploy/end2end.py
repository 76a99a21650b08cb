"""End-to-end export: a config + checkpoint -> one self-sufficient .onnx (``--end2end``).

The graph holds preprocessing, the model and postprocessing (:mod:`.end2end_det`: single-stage
detectors, :mod:`.end2end_twostage`: Faster / Mask R-CNN and Cascade
(Mask) R-CNN, :mod:`.end2end_detr`: DETR, Deformable DETR, DINO, :mod:`.end2end_sparse`:
Sparse R-CNN, :mod:`.end2end_seg`: segmentors; what they share: :mod:`.common`, which also holds
the one patching mechanism, :func:`~.common.traceable`, that :func:`export_end2end` applies around
the exporter to make library code traceable at any size); its input is ONE image (batch 1; a
batch > 1 is refused by the graph's fixed batch dimension and by the predictor), float32
(1, 3, H, W), 0-255, channels in the order the pipeline loads them (BGR from cv2), already
resized by the config's test ``Resize``. The resize stays outside the graph, in the predictor
(:mod:`.predictor`), which reproduces the pipeline's (cv2 bilinear, mmcv's keep-ratio rounding)
and scales boxes back to the original image: an in-graph ONNX ``Resize`` differs from cv2's
fixed-point one by up to a grey level.

Everything the runtime needs travels as JSON in the file's ``metadata_props`` under
:data:`METADATA_KEY`: task, class names, palette, mean / std, channel order, size divisor,
test resize (scale, keep_ratio), score threshold, output names.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.checkpoint_io import check_checkpoint_file
from ..engine.runtime import build_from_config, read_model_config, task_scope
from ..loading.checkpoint import read_checkpoint, resolve_checkpoint
from ..visualization.palette import palette_for
from .common import traceable
from .end2end_det import End2EndDetector
from .end2end_detr import End2EndDETR
from .end2end_seg import End2EndSegmentor
from .end2end_sparse import End2EndSparseRCNN
from .end2end_twostage import End2EndTwoStage
from .export import (DEFAULT_EXPORTER, DEFAULT_OPSET, INPUT_NAME, ExportResult,
                     check_onnx_graph, torch_onnx_export)
from .predictor import METADATA_KEY, read_metadata  # noqa: F401  (read_metadata re-exported)

# test pipeline steps that need nothing at run time (loading, annotations, packing)
PASSIVE_STEPS = ('LoadImageFromFile', 'LoadAnnotations', 'PackDetInputs', 'PackSegInputs')
# families refused, with the reason (checked on the model's class names, MRO included)
# families refused before anything is built, with the reason (the model's class names, MRO
# included); within an exported family, what a wrapper cannot reproduce is refused by it
REFUSED = {
    'HybridTaskCascade': 'Hybrid Task Cascade: its interleaved mask branches and semantic head '
                         'are not exported (Cascade R-CNN / Cascade Mask R-CNN are)',
    'MaskFormer': 'MaskFormer / Mask2Former: query-based panoptic heads are not exported',
}


# wrappers whose graphs the dynamo exporter writes (tests/test_deploy_dynamo.py), with what they
# cover: every end-to-end family today; a wrapper added without dynamo support is refused there
# with one line (:func:`export_end2end`) and exports on the TorchScript exporter
DYNAMO_FAMILIES = {
    'End2EndDetector': 'single-stage detectors (ATSS, RetinaNet, FCOS, GFL)',
    'End2EndSegmentor': 'mmseg EncoderDecoder segmentors',
    'End2EndTwoStage': 'Faster / Mask / Cascade (Mask) R-CNN',
    'End2EndDETR': 'DETR, Deformable DETR, DINO',
    'End2EndSparseRCNN': 'Sparse R-CNN',
}


def dynamo_exports(wrapped: nn.Module) -> bool:
    """Whether the dynamo exporter writes ``wrapped``'s graph (:data:`DYNAMO_FAMILIES`)."""
    name = type(wrapped).__name__
    return name in DYNAMO_FAMILIES


def refusal(model: nn.Module | type) -> str | None:
    """The one-line reason ``model`` (or its class) cannot be exported end to end, or None."""
    cls = model if isinstance(model, type) else type(model)
    names = [c.__name__ for c in cls.__mro__]
    for key, reason in REFUSED.items():
        if key in names:
            return f'{cls.__name__}: {reason}'
    return None


def check_family(cfg: Any) -> None:
    """ValueError with the reason when the config's model family cannot be exported end to
    end (read from the registry's class, before anything is built)."""
    import importlib

    scope = task_scope(cfg)
    importlib.import_module(f'{scope}.models')
    registry = importlib.import_module(f'{scope}.registry').MODELS
    cls = registry.get(cfg.model.type)
    reason = cls is not None and refusal(cls)
    if reason:
        raise ValueError(reason)


def pipeline_resize(cfg: Any) -> dict | None:
    """The config's test ``Resize`` as {scale: [w, h], keep_ratio}; None without one.
    ValueError for a test pipeline step the predictor does not reproduce."""
    pipeline = cfg.get('test_pipeline') or cfg.test_dataloader.dataset.get('pipeline', [])
    resize = None
    for step in pipeline:
        kind = step['type'].split('.')[-1]
        if kind == 'Resize' and resize is None and step.get('scale') is not None:
            scale = step['scale']
            scale = [scale, scale] if isinstance(scale, int) else list(scale)
            resize = dict(scale=scale, keep_ratio=bool(step.get('keep_ratio', False)))
        elif kind not in PASSIVE_STEPS:
            raise ValueError(f'test pipeline step {kind} is not reproduced by the deployed '
                             'predictor (it handles LoadImageFromFile, Resize(scale=...), '
                             'LoadAnnotations, Pack*Inputs)')
    return resize


def build_model(config: str | Path, checkpoint: str | None = None,
                cfg_options: dict | None = None) -> tuple[nn.Module, Any]:
    """(eval model with a whole-model checkpoint loaded strictly, or random weights, config).
    ValueError before building for a family :func:`check_family` refuses."""
    if checkpoint is not None:  # a whole-model checkpoint: no backbone / hub advice
        check_checkpoint_file(checkpoint, 'whole-model checkpoint')
    cfg = read_model_config(config, cfg_options)
    check_family(cfg)
    pipeline_resize(cfg)  # refuse an unsupported test pipeline before building
    model = build_from_config(cfg, init=True)
    if checkpoint is not None:
        state = read_checkpoint(resolve_checkpoint(checkpoint))
        model.load_state_dict(state.get('state_dict', state), strict=True)
    return model.eval(), cfg


def wrap_end2end(model: nn.Module, task: str) -> nn.Module:
    """The :class:`End2EndDetector` / :class:`End2EndSegmentor` of ``model``; ValueError with
    the reason where the family cannot be exported."""
    reason = refusal(model)
    if reason:
        raise ValueError(reason)
    if task == 'seg':
        return End2EndSegmentor(model).eval()
    families = {c.__name__ for c in type(model).__mro__}
    if 'DetectionTransformer' in families:  # DETR, Deformable DETR, DINO
        return End2EndDETR(model).eval()
    if 'SparseRCNN' in families:
        return End2EndSparseRCNN(model).eval()
    if hasattr(model, 'rpn_head') and hasattr(model, 'roi_head'):
        return End2EndTwoStage(model).eval()
    if not hasattr(model, 'bbox_head'):
        raise ValueError(f'{type(model).__name__}: not a single-stage detector (no bbox_head)')
    return End2EndDetector(model).eval()


def metadata(cfg: Any, wrapped: nn.Module, task: str, outputs: list[str]) -> dict:
    """What the predictor needs, from the config and the wrapped model."""
    pre = wrapped.preprocess
    meta = cfg.test_dataloader.dataset.get('metainfo') or {}
    classes = list(meta.get('classes') or [])
    if not classes:  # the dataset class's own METAINFO
        import importlib

        registry = importlib.import_module(f'{task_scope(cfg)}.registry').DATASETS
        dataset_cls = registry.get(cfg.test_dataloader.dataset.type)
        info = getattr(dataset_cls, 'METAINFO', {})
        classes, meta = list(info.get('classes', [])), info
    out = dict(task=task, input=INPUT_NAME, outputs=outputs, classes=classes,
               palette=palette_for(classes, meta.get('palette')),  # one colour per class
               mean=pre.mean.flatten().tolist(), std=pre.std.flatten().tolist(),
               bgr_to_rgb=pre.bgr_to_rgb, size_divisor=pre.size_divisor,
               pad_value=pre.pad_value, test_resize=pipeline_resize(cfg), batch_size=1,
               input_format='float32 (1, 3, H, W), 0-255, BGR as loaded; resized by the '
                            'predictor (test_resize), normalised and padded in the graph')
    if task == 'det':
        mask_thr = float(getattr(getattr(wrapped, 'roi', None), 'test_cfg', {}).get(
            'mask_thr_binary', 0.5)) if getattr(wrapped, 'with_mask', False) else None
        out.update(masks=mask_thr is not None, mask_thr_binary=mask_thr,
                   score_thr=getattr(wrapped, 'score_thr', None),
                   iou_thr=getattr(wrapped, 'iou_thr', None),  # None: no NMS (DETR family)
                   max_per_img=wrapped.max_per_img, nms_pre=getattr(wrapped, 'nms_pre', None))
    return out


def write_metadata(path: str | Path, values: dict) -> None:
    import onnx
    model = onnx.load(str(path))
    entry = next((p for p in model.metadata_props if p.key == METADATA_KEY), None) \
        or model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(values)
    onnx.save(model, str(path))


def export_end2end(config: str | Path, out: str | Path, checkpoint: str | None = None,
                   opset: int = DEFAULT_OPSET, shape: tuple[int, int] = (224, 224),
                   cfg_options: dict | None = None,
                   exporter: str = DEFAULT_EXPORTER) -> ExportResult:
    """Export a config's detector / segmentor end to end (module docstring) on ``exporter``
    (:data:`pvt_mm.deploy.export.EXPORTERS`)."""
    model, cfg = build_model(config, checkpoint, cfg_options)
    task = 'seg' if task_scope(cfg) == 'mmseg' else 'det'
    wrapped = wrap_end2end(model, task)
    if exporter == 'dynamo' and not dynamo_exports(wrapped):
        raise ValueError(f'{type(model).__name__}: not exported on the dynamo exporter yet '
                         '(use --exporter torchscript); it exports '
                         + ', '.join(DYNAMO_FAMILIES.values()))
    if task == 'det':
        from .common import DET_OUTPUTS as names
        names = names + (('masks',) if getattr(wrapped, 'with_mask', False) else ())
        dynamic = {INPUT_NAME: {2: 'height', 3: 'width'}}
    else:
        from .end2end_seg import SEG_OUTPUTS as names
        dynamic = {INPUT_NAME: {2: 'height', 3: 'width'}, names[0]: {1: 'height', 2: 'width'}}
    x = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(0)) * 255
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with traceable(wrapped):  # the wrapper's patches of library code, while tracing
        torch_onnx_export(wrapped, x, out, INPUT_NAME, names, dynamic, opset, exporter)
    write_metadata(out, metadata(cfg, wrapped, task, list(names)))
    check_onnx_graph(out)
    return ExportResult(out, INPUT_NAME, tuple(names), tuple(x.shape))
