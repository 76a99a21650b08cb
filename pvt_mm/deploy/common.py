"""What the end-to-end graphs share (:mod:`.end2end_det`, :mod:`.end2end_twostage`,
:mod:`.end2end_sparse`, :mod:`.end2end_detr`, :mod:`.end2end_seg` import it from here, never
from one another):

- :class:`Preprocess`: the config's data preprocessor on one image;
- box arithmetic: :func:`grid_anchors`, :func:`delta2bbox`, :func:`clip_boxes`;
- :class:`RoIFeatures`: mmdet's ``SingleRoIExtractor`` on ONNX ``RoiAlign`` (two-stage
  detectors, Sparse R-CNN), :func:`head_problems` / :func:`refuse` for what it cannot reproduce;
- :class:`End2EndModule`, the wrappers' base: its :meth:`~End2EndModule.traceable_patches` name
  the mmcv / mmdet / mmseg functions that tracing would freeze at the traced size, and
  :func:`traceable` swaps in the run-time-size versions while the exporter traces (one
  mechanism, applied in one place: :func:`pvt_mm.deploy.end2end.export_end2end`). An eager
  forward runs the libraries' own code.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .ops import pad_to_divisor, roi_align, size_dims

DET_OUTPUTS = ('num_dets', 'boxes', 'scores', 'labels')
Patch = tuple[Any, str, Any]  # (owner: module or class, attribute, replacement)


class End2EndModule(nn.Module):
    """Base of the end-to-end wrappers: ``preprocess`` (a :class:`Preprocess`) and the
    patches that make the wrapped library code traceable at any input size."""

    preprocess: 'Preprocess'

    def traceable_patches(self) -> list[Patch]:
        """(owner, attribute, replacement) applied by :func:`traceable` while exporting."""
        return []


@contextlib.contextmanager
def patched(patches: Sequence[Patch]) -> Iterator[None]:
    """Set each ``owner.attribute`` to its replacement while the block runs; the originals
    (from the owner's own ``__dict__``: a class's staticmethod stays one) restored after."""
    saved = [(owner, name, vars(owner)[name]) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def traceable(wrapped: nn.Module) -> contextlib.AbstractContextManager:
    """The context in which ``wrapped`` is exported: its :meth:`End2EndModule.traceable_patches`
    applied (nothing for a module without them)."""
    patches = getattr(wrapped, 'traceable_patches', None)
    return patched(patches() if patches is not None else [])


class Preprocess(nn.Module):
    """mmdet's / mmseg's data preprocessor on one image: (1, 3, H, W) float, channels in the
    loaded order (BGR from cv2 / mmcv) -> normalised, padded (1, 3, H', W')."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], bgr_to_rgb: bool,
                 size_divisor: int = 1, pad_value: float = 0.) -> None:
        super().__init__()
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.bgr_to_rgb, self.size_divisor, self.pad_value = bgr_to_rgb, size_divisor, pad_value

    @classmethod
    def from_model(cls, model: nn.Module) -> 'Preprocess':
        pre = model.data_preprocessor
        if not getattr(pre, '_enable_normalize', False):
            raise ValueError(f'{type(pre).__name__} does not normalise (no mean / std)')
        divisor = getattr(pre, 'pad_size_divisor', None)
        if divisor is None:  # mmseg: padding at test time only through its test_cfg
            divisor = (getattr(pre, 'test_cfg', None) or {}).get('size_divisor') or 1
        bgr_to_rgb = getattr(pre, '_channel_conversion', getattr(pre, 'channel_conversion', 0))
        return cls(pre.mean.flatten().tolist(), pre.std.flatten().tolist(), bool(bgr_to_rgb),
                   int(divisor), float(getattr(pre, 'pad_value', getattr(pre, 'pad_val', 0))))

    def forward(self, image: Tensor) -> Tensor:
        if self.bgr_to_rgb:
            image = image[:, [2, 1, 0]]
        return pad_to_divisor((image - self.mean) / self.std, self.size_divisor, self.pad_value)


# --- boxes ------------------------------------------------------------------------------------

def grid_anchors(base: Tensor, feat: Tensor, stride: Sequence[float], offset: float) -> Tensor:
    """mmdet's ``AnchorGenerator.single_level_grid_priors``: (A, 4) base anchors on the
    (H, W) grid of ``feat`` -> (H * W * A, 4), locations row-major, anchors inner."""
    h, w = size_dims(feat)
    xs = (torch.arange(w, dtype=torch.float32) + offset) * stride[0]
    ys = (torch.arange(h, dtype=torch.float32) + offset) * stride[1]
    yy, xx = torch.meshgrid(ys, xs, indexing='ij')
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    shifts = torch.stack([xx, yy, xx, yy], -1)
    return (shifts[:, None, :] + base[None]).reshape(-1, 4)


def clip_boxes(boxes: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """Clamp x to [0, width], y to [0, height] (sizes as run-time tensors)."""
    x = torch.minimum(boxes[:, 0::2].clamp(min=0), width.to(boxes.dtype))
    y = torch.minimum(boxes[:, 1::2].clamp(min=0), height.to(boxes.dtype))
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], -1)


def delta2bbox(priors: Tensor, deltas: Tensor, means: Sequence[float], stds: Sequence[float],
               wh_ratio_clip: float = 16 / 1000, ctr_clamp: float | None = None) -> Tensor:
    """mmdet's ``DeltaXYWHBBoxCoder.decode`` (before clipping): (N, 4) anchors + deltas."""
    d = deltas * deltas.new_tensor(stds) + deltas.new_tensor(means)
    pxy = (priors[:, :2] + priors[:, 2:]) * 0.5
    pwh = priors[:, 2:] - priors[:, :2]
    dxy_wh = pwh * d[:, :2]
    max_ratio = abs(math.log(wh_ratio_clip))
    if ctr_clamp is not None:
        dxy_wh = dxy_wh.clamp(min=-ctr_clamp, max=ctr_clamp)
        dwh = d[:, 2:].clamp(max=max_ratio)
    else:
        dwh = d[:, 2:].clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    return torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], -1)


# --- RoI features (two-stage detectors, Sparse R-CNN) -----------------------------------------

def head_problems(extractors: dict[str, nn.Module | None], bbox_head: nn.Module,
                  mask_head: nn.Module | None) -> list[str]:
    """What the graph cannot reproduce in one stage's RoI extractors, bbox and mask heads."""
    from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
    problems = []
    for name, ext in extractors.items():
        if ext is not None and type(ext) is not SingleRoIExtractor:
            problems.append(f'{name} {type(ext).__name__} (SingleRoIExtractor only)')
    if not isinstance(bbox_head.bbox_coder, DeltaXYWHBBoxCoder):
        problems.append(f'bbox coder {type(bbox_head.bbox_coder).__name__}')
    if getattr(bbox_head, 'custom_cls_channels', False) or \
            getattr(bbox_head, 'custom_activation', False):
        problems.append('custom classification channels / activation')
    if mask_head is not None and mask_head.class_agnostic:
        problems.append('class-agnostic mask head')
    return problems


def refuse(model: nn.Module, problems: list[str]) -> None:
    """ValueError naming ``problems`` (what the graph cannot reproduce in ``model``), if any."""
    if problems:
        raise ValueError(f'{type(model).__name__}: not exported end to end: ' +
                         '; '.join(problems))


class RoIFeatures(nn.Module):
    """mmdet's ``SingleRoIExtractor`` with ONNX ``RoiAlign``: feats (levels of (1, C, h, w)),
    rois (n, 4) -> (n, C, out, out).

    Each RoI's level from its scale (floor(log2(sqrt(w h) / finest_scale + 1e-6)), clamped),
    ``RoiAlign`` per level on the RoIs of that level (one dummy RoI appended and dropped so that
    an empty level still runs), the per-level results put back in RoI order."""

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        layer = extractor.roi_layers[0]
        if not getattr(layer, 'aligned', True) or getattr(layer, 'pool_mode', 'avg') != 'avg':
            raise ValueError('RoIAlign with aligned=False or max pooling is not exported')
        self.out_h, self.out_w = layer.output_size
        self.sampling_ratio = int(layer.sampling_ratio)
        self.scales = [float(s) for s in (1 / torch.tensor(extractor.featmap_strides,
                                                           dtype=torch.float64)).tolist()]
        self.finest_scale = float(extractor.finest_scale)

    def forward(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        num_levels = len(self.scales)
        scale = torch.sqrt((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1]))
        levels = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        levels = levels.clamp(min=0, max=num_levels - 1).long()
        order, parts = [], []
        for i in range(num_levels):
            idx = torch.nonzero(levels == i).reshape(-1)
            level_rois = torch.cat([rois[idx], rois.new_zeros((1, 4))])  # never empty
            out = roi_align(feats[i], level_rois, torch.zeros_like(level_rois[:, 0]).long(),
                            self.out_h, self.out_w, self.scales[i], self.sampling_ratio)
            order.append(idx)
            parts.append(out[:-1])
        return torch.cat(parts)[torch.cat(order).argsort()]
