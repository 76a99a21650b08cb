"""Whole single-stage detectors as one graph: image in, fixed-size detections out.

:class:`End2EndDetector` wraps an mmdet single-stage detector (RetinaNet, ATSS, FCOS, GFL) and
computes what ``model.predict(..., rescale=False)`` computes, with ops that trace to standard
ONNX at any input size:

1. :class:`~.common.Preprocess`: the config's ``data_preprocessor`` (BGR -> RGB if set,
   (x - mean) / std, zero padding at the bottom / right to ``pad_size_divisor``);
2. backbone, neck, head (``model.extract_feat``, ``bbox_head(...)``);
3. per FPN level as mmdet's ``_predict_by_feat_single``: class scores (sigmoid, or softmax less
   the background column), the top ``nms_pre`` (prior, class) pairs of the flattened scores,
   scores <= ``score_thr`` dropped, score factors (centerness) multiplied in, boxes decoded
   from the priors (anchors + ``DeltaXYWHBBoxCoder``; points / anchor centres + distances)
   and clipped to the unpadded image;
4. :func:`~pvt_mm.deploy.ops.multiclass_nms` (ONNX ``NonMaxSuppression``), top ``max_per_img``.

Outputs: ``num_dets`` (1,) int64, ``boxes`` (1, K, 4) x1 y1 x2 y2 in the input image's pixels,
``scores`` (1, K), ``labels`` (1, K) int64 (K = ``max_per_img``; rows past ``num_dets`` zero,
label -1). The input is one image, batch 1.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .common import End2EndModule, Preprocess, clip_boxes, delta2bbox, grid_anchors
from .ops import dynamic_len, dynamic_size, multiclass_nms, size_dims


def grid_points(feat: Tensor, stride: Sequence[float], offset: float) -> Tensor:
    """mmdet's ``MlvlPointGenerator.single_level_grid_priors``: (H * W, 2) x, y."""
    h, w = size_dims(feat)
    xs = (torch.arange(w, dtype=torch.float32) + offset) * stride[0]
    ys = (torch.arange(h, dtype=torch.float32) + offset) * stride[1]
    yy, xx = torch.meshgrid(ys, xs, indexing='ij')
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)


def distance2bbox(points: Tensor, distance: Tensor) -> Tensor:
    """mmdet's ``DistancePointBBoxCoder.decode`` (before clipping): (N, 2) points + l, t, r, b."""
    return torch.cat([points - distance[:, :2], points + distance[:, 2:]], -1)


def dense_head_kind(head: nn.Module) -> str:
    """'anchor' (anchors + deltas), 'point' (points + distances) or 'gfl'; ValueError names
    the head this graph cannot decode."""
    from mmdet.models.dense_heads import AnchorHead, FCOSHead, GFLHead
    from mmdet.models.task_modules.coders import (DeltaXYWHBBoxCoder,
                                                  DistancePointBBoxCoder)
    name = type(head).__name__
    coder = getattr(head, 'bbox_coder', None)
    if isinstance(head, GFLHead) and isinstance(coder, DistancePointBBoxCoder):
        return 'gfl'
    if type(head) is FCOSHead and isinstance(coder, DistancePointBBoxCoder):
        return 'point'
    if isinstance(head, AnchorHead) and type(head).__name__ in ('RetinaHead', 'ATSSHead') \
            and isinstance(coder, DeltaXYWHBBoxCoder):
        return 'anchor'
    raise ValueError(f'end-to-end export decodes RetinaHead / ATSSHead (anchors + '
                     f'DeltaXYWHBBoxCoder), FCOSHead and GFLHead; {name} with '
                     f'{type(coder).__name__} is not supported')


class End2EndDetector(End2EndModule):
    """Single-stage mmdet detector + its preprocessing and postprocessing (module docstring).

    forward: (1, 3, H, W) float32 image (0-255, loaded channel order) -> num_dets, boxes,
    scores, labels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        head = model.bbox_head
        self.kind = dense_head_kind(head)
        cfg = head.test_cfg
        nms = cfg.get('nms') or {}
        if nms.get('type', 'nms') != 'nms':
            raise ValueError(f"test_cfg.nms type {nms.get('type')!r}: only 'nms' is exported "
                             '(ONNX NonMaxSuppression)')
        self.preprocess = Preprocess.from_model(model)
        self.model, self.head = model, head
        self.nms_pre = int(cfg.get('nms_pre', -1))
        self.score_thr = float(cfg.get('score_thr', 0.))
        self.iou_thr = float(nms['iou_threshold'])
        self.max_per_img = int(cfg.get('max_per_img', 100))
        self.min_bbox_size = float(cfg.get('min_bbox_size', -1))
        self.num_classes = head.num_classes
        self.sigmoid = head.use_sigmoid_cls
        gen = head.prior_generator
        self.strides = [tuple(float(s) for s in st) for st in gen.strides]
        if self.kind == 'point':
            self.offset = float(gen.offset)
        else:
            self.offset = float(gen.center_offset)
            for i, base in enumerate(gen.base_anchors):
                self.register_buffer(f'base_anchors{i}', base.float().clone())

    def priors(self, level: int, feat: Tensor) -> Tensor:
        """(N, 4) anchors or (N, 2) points of one level, in the order of the head's maps."""
        if self.kind == 'point':
            return grid_points(feat, self.strides[level], self.offset)
        return grid_anchors(getattr(self, f'base_anchors{level}'), feat, self.strides[level],
                            self.offset)

    def decode(self, level: int, priors: Tensor, pred: Tensor) -> Tensor:
        if self.kind == 'anchor':
            coder = self.head.bbox_coder
            return delta2bbox(priors, pred, coder.means, coder.stds,
                              ctr_clamp=coder.ctr_clamp if coder.add_ctr_clamp else None)
        if self.kind == 'gfl':  # distances from the anchor centres, in strides
            priors = (priors[:, :2] + priors[:, 2:]) * 0.5
        return distance2bbox(priors, pred)

    def level_candidates(self, level: int, cls: Tensor, reg: Tensor, factor: Tensor | None
                         ) -> tuple[Tensor, Tensor, Tensor]:
        """One level's top ``nms_pre`` (prior, class) pairs -> boxes (k, 4) before clipping,
        scores (k,) (0 where <= score_thr), labels (k,)."""
        C = self.num_classes
        scores = cls[0].permute(1, 2, 0).reshape(-1, self.head.cls_out_channels)
        scores = scores.sigmoid() if self.sigmoid else scores.softmax(-1)[:, :-1]
        if self.kind == 'gfl':
            pred = self.head.integral(reg[0].permute(1, 2, 0)) * self.strides[level][0]
        else:
            pred = reg[0].permute(1, 2, 0).reshape(-1, 4)
        priors = self.priors(level, cls)
        flat = scores.reshape(-1)
        if self.nms_pre > 0:  # pad so that topk(nms_pre) exists at any size; pads score 0
            flat, idx = torch.cat([flat, flat.new_zeros(self.nms_pre)]).topk(self.nms_pre)
        else:
            idx = torch.arange(flat.shape[0])
        n = dynamic_len(scores)
        prior_idx = torch.minimum(idx // C, n - 1)
        labels = idx % C
        valid = flat > self.score_thr
        if factor is not None:
            flat = flat * factor[0].permute(1, 2, 0).reshape(-1).sigmoid()[prior_idx]
        flat = torch.where(valid, flat, torch.zeros_like(flat))
        boxes = self.decode(level, priors[prior_idx], pred[prior_idx])
        return boxes, flat, labels

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        height, width = dynamic_size(image)
        outs = self.head(self.model.extract_feat(self.preprocess(image)))
        factors = outs[2] if len(outs) > 2 else [None] * len(outs[0])
        parts = [self.level_candidates(i, c, r, f)
                 for i, (c, r, f) in enumerate(zip(outs[0], outs[1], factors))]
        boxes = clip_boxes(torch.cat([p[0] for p in parts]), height, width)
        scores = torch.cat([p[1] for p in parts])
        labels = torch.cat([p[2] for p in parts])
        if self.min_bbox_size >= 0:  # mmdet checks it on rescaled boxes (equal at scale 1)
            wh = boxes[:, 2:] - boxes[:, :2]
            keep = (wh > self.min_bbox_size).all(-1)
            scores = torch.where(keep, scores, torch.zeros_like(scores))
        return multiclass_nms(boxes, scores, labels, self.iou_thr, self.max_per_img)
