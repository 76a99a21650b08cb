"""Point a (swapped) mmdet / mmseg config at a user's dataset (``tools/swap_backbone.py
--data DIR``): :func:`data_overrides` returns the keys a config inheriting it must set.

* every dataloader's dataset: the folder's paths, ``CocoDataset`` / ``BaseSegDataset``, the
  classes and a palette in ``metainfo`` (wrappers such as ``RepeatDataset`` are kept);
* ``num_classes`` in every head that has one (single-stage heads, each bbox / mask head of
  two-stage, cascade and Sparse R-CNN stages, DETR-family heads, mmseg decode and auxiliary
  heads; the RPN is class-agnostic and left alone), and class-count-sized fields such as
  Mask2Former's ``loss_cls.class_weight``;
* the COCO evaluators' ``ann_file`` (the val annotations) and metrics (``segm`` only with
  masks);
* with a ``scale`` factor, every size of the pipelines (resizes, multi-scale lists, crops,
  pads, mosaics) and of the data preprocessors (mmseg's crop ``size``, batch pads).

What cannot be set correctly is refused with :class:`SwapError` naming the field.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .data import DatasetInfo
from .rules import SwapError, as_list

__all__ = ['Expr', 'data_overrides', 'resolve_exprs', 'stock_test_scale', 'auto_scale']

WRAPPERS = ('RepeatDataset', 'ClassBalancedDataset', 'MultiImageMixDataset')
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
SIZE_KEYS = ('scale', 'scales', 'img_scale', 'crop_size', 'size', 'max_size', 'border')
RESIZES = ('Resize', 'RandomResize', 'RandomChoiceResize', 'FixShapeResize',
           'ResizeShortestEdge', 'mmdet.Resize', 'mmseg.Resize')
# what a COCO instances folder cannot give: refused, naming the field
UNSUPPORTED_KEYS = {
    'num_things_classes': 'panoptic segmentation (things + stuff classes) needs panoptic '
                          'annotations, not COCO instances',
    'num_stuff_classes': 'panoptic segmentation (things + stuff classes) needs panoptic '
                         'annotations, not COCO instances',
    'semantic_head': 'its semantic branch trains on stuff maps (data_prefix seg) that a COCO '
                     'instances folder does not have',
}
UNSUPPORTED_TRANSFORMS = {
    'LoadProposals': 'reads precomputed proposals (proposal_file)',
    'LoadPanopticAnnotations': 'reads panoptic annotations',
    'LoadTrackAnnotations': 'reads tracking annotations (videos)',
}
MASK_HEAD_TYPE = re.compile(r'Mask|SOLO|CondInst|BoxInst|Yolact|RTMDetIns|QueryInst')
SCALE_ROUND = 1  # sizes are whole pixels


@dataclass(frozen=True)
class Expr:
    """A value written into the config as Python source (``text``), e.g. a reference to a
    variable of the written file; :func:`resolve_exprs` gives its value in memory."""

    text: str
    value: Any

    def __repr__(self) -> str:
        return self.text


def resolve_exprs(value: Any) -> Any:
    """``value`` with every :class:`Expr` replaced by its value (deep copy)."""
    if isinstance(value, Expr):
        return resolve_exprs(value.value)
    if isinstance(value, Mapping):
        return {k: resolve_exprs(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(resolve_exprs(v) for v in value)
    return copy.deepcopy(value)


# ---- sizes -----------------------------------------------------------------------------------
def _walk_transforms(pipeline: Any, where: str):
    """(transform dict, where) for every transform, nested ones (RandomChoice, TTA) too."""
    for i, t in enumerate(as_list(pipeline or [])):
        if isinstance(t, Mapping):
            yield t, f'{where}[{i}]'
            for key in ('transforms', 'transforms_list'):
                if isinstance(t.get(key), (list, tuple)):
                    yield from _walk_transforms(t[key], f'{where}[{i}].{key}')
        elif isinstance(t, (list, tuple)):  # RandomChoice: a list of lists
            yield from _walk_transforms(t, f'{where}[{i}]')


def stock_test_scale(cfg: Mapping) -> tuple[int, ...] | None:
    """The test pipeline's resize (W, H) (or (long, short) with keep_ratio), else None."""
    ds = _inner(cfg.get('test_dataloader') or cfg.get('val_dataloader') or {}, '')[0]
    for t, _ in _walk_transforms(ds.get('pipeline'), ''):
        scale = t.get('scale')
        if t.get('type') in RESIZES and isinstance(scale, (list, tuple)) and len(scale) == 2 \
                and all(isinstance(v, int) for v in scale):
            return tuple(scale)
    return None


def auto_scale(cfg: Mapping, info: DatasetInfo) -> tuple[float, str] | None:
    """(factor, note) when the images are much smaller than the stock test resize (their
    median shorter side at most half its shorter side): sizes shrink so that the test resize's
    shorter side becomes the images' (rounded up to a multiple of 32, at least 64)."""
    stock = stock_test_scale(cfg)
    if not stock or not info.short_side or 2 * info.short_side > min(stock):
        return None
    short = max(64, -(-info.short_side // 32) * 32)
    factor = short / min(stock)
    return factor, (f'images are ~{info.short_side} px, the stock test resize is '
                    f'{stock[0]}x{stock[1]}: every pipeline size scaled by {factor:.3g} '
                    f'(test resize {_scaled(stock, factor)}); --scale sets another')


def _scaled(value: Any, factor: float) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return max(1, round(value * factor)) if value > 0 else -max(1, round(-value * factor))
    if isinstance(value, (list, tuple)):
        return type(value)(_scaled(v, factor) for v in value)
    return value


def _scale_transform(t: dict, factor: float, where: str) -> None:
    for key in SIZE_KEYS:
        value = t.get(key)
        if value is None or isinstance(value, float):
            continue
        if key == 'crop_size' and 'relative' in str(t.get('crop_type', '')):
            continue  # fractions of the image
        flat = [v for v in (value if isinstance(value, (list, tuple)) else [value])
                for v in (v if isinstance(v, (list, tuple)) else [v])]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
            raise SwapError(f'{where}.{key} = {value!r} ({t.get("type")}): not a size the '
                            '--scale can scale; edit it by hand or pass --scale 0')
        if all(isinstance(v, int) for v in flat):
            t[key] = _scaled(value, factor)


def scale_pipeline(pipeline: list, factor: float, where: str,
                   exact: tuple[tuple[int, ...], tuple[int, ...]] | None = None) -> list:
    """A copy of ``pipeline`` with every integer size multiplied by ``factor``; ``exact``
    (stock scale, new scale): resizes to the stock scale get the new one as given."""
    out = copy.deepcopy(list(pipeline))
    if factor != 1:
        for t, w in _walk_transforms(out, where):
            stock = t.get('scale')
            _scale_transform(t, factor, w)
            if exact and t.get('type') in RESIZES and isinstance(stock, (list, tuple)) \
                    and tuple(stock) == exact[0]:
                t['scale'] = type(stock)(exact[1])
    return out


def _check_transforms(pipeline: Any, where: str, info: DatasetInfo, masks: bool) -> list:
    """Refuse what the folder cannot feed; the LoadAnnotations flags the data can give."""
    out = copy.deepcopy(list(pipeline or []))
    for t, w in _walk_transforms(out, where):
        kind = str(t.get('type', '')).split('.')[-1]
        if kind in UNSUPPORTED_TRANSFORMS:
            raise SwapError(f'{w} {kind} {UNSUPPORTED_TRANSFORMS[kind]}: --data gives '
                            f'{"COCO instances" if info.kind == "coco" else "label maps"} only')
        if kind != 'LoadAnnotations':
            continue
        if info.kind == 'seg':
            if 'reduce_zero_label' in t:
                t['reduce_zero_label'] = False  # classes.txt names value 0 too
            continue
        if t.get('with_seg'):
            raise SwapError(f'{w}.with_seg: the model trains on stuff maps, which a COCO '
                            'instances folder does not have')
        if t.get('with_mask') and not masks:
            t['with_mask'] = False  # box-only model or data without masks
    return out


# ---- datasets --------------------------------------------------------------------------------
def _inner(loader: Mapping, where: str) -> tuple[dict, list[str]]:
    """The innermost dataset of ``loader`` and the keys leading to it."""
    ds, path = loader.get('dataset') or {}, ['dataset']
    while isinstance(ds, Mapping) and ds.get('type') in WRAPPERS and 'dataset' in ds:
        ds, path = ds['dataset'], [*path, 'dataset']
    if isinstance(ds, Mapping) and 'datasets' in ds:
        raise SwapError(f'{where}.{".".join(path)} is a {ds.get("type")} of several datasets;'
                        ' --data gives one: edit it by hand')
    return dict(ds or {}), path


def _dataset(stock: Mapping, info: DatasetInfo, split: str, pipeline: Expr) -> dict:
    common = dict(_delete_=True, data_root=Expr('data_root', info.root),
                  metainfo=Expr('metainfo', dict(classes=info.classes, palette=info.palette)))
    if info.kind == 'coco':
        out = dict(**common, type='CocoDataset', ann_file=info.ann_file[split],
                   data_prefix=dict(img=info.img_prefix[split]))
        for key in ('filter_cfg', 'test_mode', 'backend_args'):
            if key in stock:
                out[key] = stock[key]
        if split == 'train' and 'filter_cfg' in out:  # tiny images are kept
            out['filter_cfg'] = dict(out['filter_cfg'], min_size=0)
    else:
        out = dict(**common, type='BaseSegDataset', img_suffix=info.img_suffix,
                   seg_map_suffix=info.seg_map_suffix, reduce_zero_label=False,
                   data_prefix=dict(img_path=info.img_prefix[split],
                                    seg_map_path=info.seg_prefix[split]))
        if 'test_mode' in stock:
            out['test_mode'] = stock['test_mode']
    out['pipeline'] = pipeline
    return out


def _loader_override(loader: Mapping, where: str, new: dict, factor: float) -> dict:
    """The dataloader override: wrappers kept (a MultiImageMixDataset's own pipeline scaled),
    the innermost dataset replaced."""
    _, path = _inner(loader, where)
    out: dict[str, Any] = {}
    node, target = loader, out
    for depth, key in enumerate(path[:-1]):
        node = node[key]
        target[key] = {}
        target = target[key]
        if 'pipeline' in node:
            target['pipeline'] = scale_pipeline(node['pipeline'], factor,
                                                f'{where}.{".".join(path[:depth + 1])}.pipeline')
    target[path[-1]] = new
    return out


# ---- heads ------------------------------------------------------------------------------------
def _class_fields(node: Any, n: int, old: int | None, where: str) -> Any:
    """Overrides setting ``num_classes`` (and fields sized by it) inside ``node``; lists are
    returned whole (a config list replaces its base)."""
    if isinstance(node, (list, tuple)):
        items = [_class_fields(v, n, old, f'{where}[{i}]') for i, v in enumerate(node)]
        if not any(items):
            return None
        return [_merged(v, o) if isinstance(v, Mapping) and o else copy.deepcopy(v)
                for v, o in zip(node, items)]
    if not isinstance(node, Mapping):
        return None
    out: dict[str, Any] = {}
    for key, value in node.items():
        here = f'{where}.{key}'
        if key in UNSUPPORTED_KEYS and value:
            raise SwapError(f'{here}: {UNSUPPORTED_KEYS[key]}; --data cannot set it')
        if key in ('rpn_head', 'train_cfg', 'test_cfg', 'data_preprocessor', 'backbone',
                   'neck', 'init_cfg'):
            continue  # class-agnostic or not a head
        if key == 'num_classes' and isinstance(value, int):
            out[key] = n
            continue
        inner = _class_fields(value, n, node.get('num_classes', old), here)
        if inner:
            out[key] = inner
    if 'num_classes' in node and node.get('out_channels') == node['num_classes']:
        out['out_channels'] = n  # mmseg heads with out_channels spelled out
    weight = (node.get('class_weight') if isinstance(node.get('class_weight'), list) else None)
    if weight is not None and old is not None and len(weight) in (old, old + 1):
        head, tail = weight[:old], weight[old:]
        if len(set(head)) != 1:
            raise SwapError(f'{where}.class_weight weighs the {old} stock classes one by one; '
                            'give weights for your classes by hand')
        out['class_weight'] = [head[0]] * n + tail
    return out or None


def _merged(base: Mapping, new: Mapping) -> dict:
    out = copy.deepcopy(dict(base))
    for k, v in new.items():
        out[k] = _merged(base[k], v) if isinstance(v, Mapping) and isinstance(
            base.get(k), Mapping) else v
    return out


def predicts_masks(model: Mapping) -> bool:
    """Whether the model has a mask branch (a ``mask_head`` or a mask-predicting head type)."""
    def walk(node: Any) -> bool:
        if isinstance(node, Mapping):
            if node.get('mask_head') or MASK_HEAD_TYPE.search(str(node.get('type', ''))):
                return True
            return any(walk(v) for k, v in node.items() if k not in ('backbone', 'neck'))
        if isinstance(node, (list, tuple)):
            return any(walk(v) for v in node)
        return False
    return any(walk(model.get(k)) for k in model if k.endswith('head'))


# ---- the whole thing -----------------------------------------------------------------------
def _evaluators(cfg: Mapping, info: DatasetInfo, masks: bool) -> dict:
    stock = cfg.get('val_evaluator') or {}
    metric = stock.get('metric') if isinstance(stock, Mapping) and \
        stock.get('type') == 'CocoMetric' else None
    metrics = [m for m in as_list(metric or ['bbox']) if m != 'segm' or masks]
    if masks and 'segm' not in metrics:
        metrics.append('segm')
    out = {}
    for key in ('val_evaluator', 'test_evaluator'):
        out[key] = dict(_delete_=True, type='CocoMetric',
                        ann_file=Expr(f'data_root + {info.ann_file["val"]!r}',
                                      info.root + info.ann_file['val']),
                        metric=metrics if len(metrics) > 1 else metrics[0],
                        format_only=False, backend_args=None)
    return out


def data_overrides(cfg: Mapping, info: DatasetInfo, scope: str, factor: float = 1.0,
                   test_scale: tuple[int, int] | None = None) -> dict:
    """The keys a config inheriting ``cfg`` (a swapped config, as a dict) must set to train
    and test on ``info``'s folder; sizes multiplied by ``factor``. Values may hold
    :class:`Expr` (variables of the written file): :func:`resolve_exprs` for the values."""
    want = 'mmdet' if info.kind == 'coco' else 'mmseg'
    if scope != want:
        raise SwapError(f'the config is an {scope} config (default_scope); {info.root} is '
                        f'{"a COCO detection" if info.kind == "coco" else "an mmseg"} '
                        f'dataset, which needs an {want} config')
    model = cfg['model']
    if any(k in model for k in ('detector', 'reid')):
        raise SwapError('model.detector: a tracking / video model; --data gives a COCO or '
                        'mmseg folder of still images')
    masks = info.kind == 'coco' and predicts_masks(model)
    if masks and not info.has_masks:
        raise SwapError(f'the model predicts masks but {info.root}{info.ann_file["train"]} '
                        "has annotations without 'segmentation'; use a box-only config")
    n = len(info.classes)
    heads = _class_fields({k: v for k, v in model.items()}, n, None, 'model')
    if not heads:
        raise SwapError('no num_classes found in the model\'s heads; --data cannot set the '
                        'number of classes')
    out: dict[str, Any] = dict(data_root=info.root,
                               metainfo=dict(classes=info.classes, palette=info.palette))
    pipelines: dict[str, list] = {}
    for loader, split, name in (('train_dataloader', 'train', 'train_pipeline'),
                                ('val_dataloader', 'val', 'test_pipeline')):
        spec = cfg.get(loader) or cfg.get('test_dataloader')
        if not spec:
            continue
        ds, _ = _inner(spec, loader)
        where = f'{loader}.dataset.pipeline'
        exact = (stock_test_scale(cfg), test_scale) if test_scale else None
        pipelines[name] = scale_pipeline(_check_transforms(ds.get('pipeline'), where, info,
                                                           masks), factor, where, exact)
    out.update(pipelines)
    for loader in LOADERS:
        spec = cfg.get(loader)
        if not spec:
            continue
        split = 'train' if loader == 'train_dataloader' else 'val'
        name = 'train_pipeline' if split == 'train' else 'test_pipeline'
        stock, _ = _inner(spec, loader)
        new = _dataset(stock, info, split, Expr(name, pipelines[name]))
        out[loader] = _loader_override(spec, loader, new, factor)
    model_out: dict[str, Any] = dict(heads)
    pre = model.get('data_preprocessor') or {}
    if factor != 1 and pre:
        fixed = {}
        if isinstance(pre.get('size'), (list, tuple)):
            fixed['size'] = _scaled(pre['size'], factor)
        if pre.get('batch_augments'):
            fixed['batch_augments'] = scale_pipeline(
                pre['batch_augments'], factor, 'model.data_preprocessor.batch_augments')
        if fixed:
            model_out['data_preprocessor'] = fixed
    out['model'] = model_out
    if info.kind == 'coco':
        out.update(_evaluators(cfg, info, masks))
    return out
