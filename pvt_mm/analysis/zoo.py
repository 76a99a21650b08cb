"""Parameters and FLOPs of every config of the model zoo (``configs/*.py``), for
``configs/README.md`` and ``configs/metafile.yml`` (``tools/zoo_table.py``).

Parameters are counted on the meta device (nothing allocated). FLOPs follow
:func:`~pvt_mm.analysis.flops.config_complexity` (multiply-accumulates of the network forward in
``tensor`` mode on one image after the data preprocessor, as mmdet's / mmseg's get_flops), split
in two so that a zoo of ~50 configs is counted in minutes on a CPU:

- backbone + neck (``extract_feat``) on the meta device, exactly, per config;
- the rest (heads) on the meta device too when every op of the head has a meta kernel
  (single-stage and DETR-like detectors, segmentation heads); otherwise (mmcv's NMS / RoIAlign:
  two-stage detectors) by one real forward per distinct head, whose cost does not depend on the
  backbone (same FPN outputs), cached by the head's config.
"""
from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.registry import MODELS

from ..engine.runtime import build_from_config, read_model_config, use_scope
from .flops import count_complexity, count_params, params_on_meta
from .models import synthetic_batch

DET_SIZE = (800, 1333)  # mmdet's get_flops / the papers' detection figures (H, W)
SEG_SIZE = (512, 512)  # mmseg's ADE20K crop


@dataclass
class ZooEntry:
    config: str
    params: int
    gflops: float | None  # None: not counted (see ``flops_note``)
    input_shape: tuple[int, int]
    flops_note: str = ''


def zoo_configs(config_dir: str | Path) -> list[Path]:
    """The zoo's configs: ``config_dir/*.py`` (not ``_base_/`` nor ``demo/``), sorted."""
    return sorted(Path(config_dir).glob('*.py'))


def standard_shape(cfg: Config) -> tuple[int, int]:
    """(H, W) of a config's standard input: segmentation 512x512 (the ADE20K crop, as the
    papers count); detection the test pipeline's resize scale as a landscape image (1333x800,
    i.e. (800, 1333), for most; (640, 1066) for the 640 px RetinaNet)."""
    if cfg.default_scope == 'mmseg':
        return SEG_SIZE
    for t in cfg.get('test_dataloader', {}).get('dataset', {}).get('pipeline', []):
        if t.get('type') == 'Resize' and t.get('scale'):
            return min(t['scale']), max(t['scale'])
    return DET_SIZE


def _head_key(cfg: Config, shape: Sequence[int]) -> str:
    """What the heads' cost depends on: the model config without backbone / neck weights'
    source (the neck's input channels do not change its outputs), and the input size."""
    model = copy.deepcopy(cfg.model.to_dict())
    model.pop('backbone')
    model.get('neck', {}).pop('in_channels', None)
    model.pop('init_cfg', None)
    model.pop('pretrained', None)
    return json.dumps([model, list(shape)], sort_keys=True, default=str)


class _Features(torch.nn.Module):
    """A detector's / segmentor's backbone + neck (``extract_feat``) as a module to count."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor):  # (B, 3, H, W) -> the neck's maps
        return self.model.extract_feat(inputs)


def _meta_model(cfg: Config) -> torch.nn.Module:
    use_scope(cfg.default_scope)
    with params_on_meta():
        return MODELS.build(copy.deepcopy(cfg.model)).eval()  # builders edit their cfg


def _preprocessed(model: torch.nn.Module, cfg: Config, shape: Sequence[int]) -> dict:
    """The data preprocessor's output (padding included) for one synthetic image; the
    preprocessor has no parameters, so this runs for real even on a meta model."""
    preprocessor = type(model.data_preprocessor)(**{
        k: v for k, v in cfg.model.get('data_preprocessor', {}).items() if k != 'type'})
    return preprocessor(_with_boxes(synthetic_batch(model, cfg, shape)), False)


def _with_boxes(batch: dict) -> dict:
    """One ground-truth box per detection sample: Sparse R-CNN's head reads the ground truth
    even in ``tensor`` mode (its value does not change the count)."""
    from mmengine.structures import InstanceData
    for sample in batch['data_samples']:
        if hasattr(sample, 'gt_instances') or type(sample).__name__ != 'DetDataSample':
            continue
        sample.gt_instances = InstanceData(bboxes=torch.tensor([[8., 8., 64., 64.]]),
                                           labels=torch.tensor([0]))
    return batch


def config_entry(path: str | Path, shape: Sequence[int] | None = None, flops: bool = True,
                 head_cache: dict[str, list] | None = None) -> ZooEntry:
    """Parameters and (optionally) GFLOPs of one config at ``shape`` (default: the standard
    input of its task). ``head_cache`` keeps the heads' [MACs, measured by a real forward]
    per distinct head."""
    cfg = read_model_config(path)
    shape = tuple(shape or standard_shape(cfg))
    key = _head_key(cfg, shape)
    model = _meta_model(cfg)
    entry = ZooEntry(config=Path(path).name, params=count_params(model), gflops=None,
                     input_shape=shape)
    if not flops:
        return entry
    data = _preprocessed(model, cfg, shape)
    inputs = torch.empty(data['inputs'].shape, device='meta')
    features = count_complexity(_Features(model), inputs).flops
    head_cache = {} if head_cache is None else head_cache
    if key not in head_cache:
        try:
            total = count_complexity(model, inputs, data['data_samples'], mode='tensor').flops
            head_cache[key] = [total - features, False]
        except (NotImplementedError, RuntimeError, TypeError, AttributeError):
            # an op without a meta kernel (mmcv's nms / roi_align): measure once for real
            real = build_from_config(copy.deepcopy(cfg), init=True).eval()  # sane proposals
            data = real.data_preprocessor(_with_boxes(synthetic_batch(real, cfg, shape)),
                                          False)
            with torch.no_grad():
                total = count_complexity(real, data['inputs'], data['data_samples'],
                                         mode='tensor').flops
                heads = total - count_complexity(_Features(real), data['inputs']).flops
            head_cache[key] = [heads, True]
    heads, real = head_cache[key]
    entry.gflops = (features + heads) / 1e9
    entry.flops_note = 'heads measured by a real forward' if real else ''
    return entry


def zoo_table(paths: Iterable[str | Path], flops: bool = True, cache: str | Path | None = None,
              ) -> list[ZooEntry]:
    """:func:`config_entry` for each config; with ``cache`` (a JSON file), entries already
    counted for the same resolved config (bases included) are read from it and new ones
    written to it."""
    stored: dict = {}
    if cache is not None and Path(cache).is_file():
        stored = json.loads(Path(cache).read_text())
    heads: dict[str, list] = stored.setdefault('_heads', {})
    out = []
    for path in paths:
        resolved = json.dumps(read_model_config(path).to_dict(), sort_keys=True, default=str)
        text = hashlib.sha256(resolved.encode()).hexdigest()
        hit = stored.get(Path(path).name)
        if hit and hit['source'] == text and (hit['gflops'] is not None or not flops):
            hit = dict(hit)
            hit.pop('source')
            hit['input_shape'] = tuple(hit['input_shape'])
            out.append(ZooEntry(**hit))
            continue
        entry = config_entry(path, flops=flops, head_cache=heads)
        stored[entry.config] = dict(asdict(entry), source=text)
        out.append(entry)
        if cache is not None:
            Path(cache).write_text(json.dumps(stored, indent=1))
    return out


def markdown_rows(entries: Iterable[ZooEntry]) -> str:
    """``| config | params (M) | GFLOPs | input |`` rows."""
    lines = ['| config | params (M) | GFLOPs | input (HxW) |', '|---|---:|---:|---|']
    for e in entries:
        g = '-' if e.gflops is None else f'{e.gflops:.1f}'
        lines.append(f'| {e.config} | {e.params / 1e6:.2f} | {g} | '
                     f'{e.input_shape[0]}x{e.input_shape[1]} |')
    return '\n'.join(lines)
