"""Two-stage detectors (Faster / Mask R-CNN with a ``StandardRoIHead``, Cascade (Mask) R-CNN
with a ``CascadeRoIHead``) as one graph.

:class:`End2EndTwoStage` computes what mmdet's ``TwoStageDetector.predict`` computes; a
``StandardRoIHead`` is a cascade of one stage:

1. :class:`~.common.Preprocess`, backbone, neck;
2. RPN as ``RPNHead._predict_by_feat_single``: per level the top ``nms_pre`` anchors by
   objectness, deltas decoded and clipped, boxes of width or height <= ``min_bbox_size``
   dropped, NMS per level (ONNX ``NonMaxSuppression``), the best ``max_per_img`` proposals;
3. RoI features as ``SingleRoIExtractor`` (:class:`~.common.RoIFeatures`: ONNX ``RoiAlign``
   per FPN level);
4. per stage its bbox head on the current RoIs; before each later stage the RoIs are refined
   as ``BBoxHead.regress_by_class`` (the deltas of each RoI's arg-max foreground class when the
   regression is class-specific, decoded with the stage's coder, clipped); the stages' class
   logits averaged (as ``CascadeRoIHead``: logits, then the last head's softmax);
5. the last head's ``predict_by_feat``: softmax scores, deltas decoded from the last RoIs and
   clipped, scores <= score_thr dropped, class-aware NMS, top ``max_per_img``;
6. masks: every stage's mask head on the final boxes (its own RoIAlign), the sigmoid of each
   box's class channel averaged over the stages (``merge_aug_masks``): ``masks`` (1, K, 28, 28)
   low-resolution probabilities, pasted into the image outside the graph
   (:func:`pvt_mm.deploy.predictor.paste_masks`, as mmdet's ``_do_paste_mask``).

Outputs as :class:`~.end2end_det.End2EndDetector` (+ ``masks``). Batch 1.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .common import (End2EndModule, Preprocess, RoIFeatures, clip_boxes, delta2bbox,
                     grid_anchors, head_problems, refuse)
from .ops import dynamic_len, dynamic_size, multiclass_nms, nms_keep


def rpn_problems(model: nn.Module) -> list[str]:
    """What the graph cannot reproduce in ``model``'s RPN and RoI test configs."""
    from mmdet.models.dense_heads import RPNHead
    problems = []
    if type(model.rpn_head) is not RPNHead:
        problems.append(f'rpn_head {type(model.rpn_head).__name__} (RPNHead only)')
    for cfg in (model.rpn_head.test_cfg, model.roi_head.test_cfg or {}):
        if (cfg.get('nms') or {}).get('type', 'nms') != 'nms':
            problems.append(f"nms type {cfg['nms']['type']!r} (only 'nms')")
    return problems


def roi_stages(roi: nn.Module) -> list[tuple] | None:
    """(bbox extractor, bbox head, mask extractor, mask head) per stage of a
    ``StandardRoIHead`` (one stage) or ``CascadeRoIHead``, the mask parts None without masks;
    None for any other RoI head. A shared extractor is mmdet's ``mask_roi_extractor`` already."""
    from mmdet.models.roi_heads import CascadeRoIHead, StandardRoIHead
    masks = roi.with_mask
    if type(roi) is StandardRoIHead:
        return [(roi.bbox_roi_extractor, roi.bbox_head, roi.mask_roi_extractor if masks else None,
                 roi.mask_head if masks else None)]
    if type(roi) is CascadeRoIHead:
        return [(roi.bbox_roi_extractor[s], roi.bbox_head[s],
                 roi.mask_roi_extractor[s] if masks else None,
                 roi.mask_head[s] if masks else None) for s in range(roi.num_stages)]
    return None


class End2EndTwoStage(End2EndModule):
    """Faster / Mask / Cascade (Mask) R-CNN + preprocessing + postprocessing (module
    docstring).

    forward: (1, 3, H, W) float32 image (0-255, loaded channel order) -> num_dets, boxes,
    scores, labels[, masks]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.check(model)
        self.preprocess = Preprocess.from_model(model)
        self.model, self.rpn, self.roi = model, model.rpn_head, model.roi_head
        rpn_cfg, rcnn_cfg = self.rpn.test_cfg, self.roi.test_cfg
        self.rpn_pre = int(rpn_cfg.get('nms_pre', -1))
        self.rpn_iou = float(rpn_cfg.nms.iou_threshold)
        self.rpn_max = int(rpn_cfg.max_per_img)
        self.rpn_min_size = float(rpn_cfg.get('min_bbox_size', -1))
        self.score_thr = float(rcnn_cfg.score_thr)
        self.iou_thr = float(rcnn_cfg.nms.iou_threshold)
        self.max_per_img = int(rcnn_cfg.max_per_img)
        self.nms_pre = self.rpn_pre
        gen = self.rpn.prior_generator
        self.strides = [tuple(float(s) for s in st) for st in gen.strides]
        self.offset = float(gen.center_offset)
        for i, base in enumerate(gen.base_anchors):
            self.register_buffer(f'base_anchors{i}', base.float().clone())
        self.with_mask = bool(self.roi.with_mask)
        self.setup_stages()

    @staticmethod
    def check(model: nn.Module) -> None:
        """ValueError naming what the graph cannot reproduce."""
        roi = model.roi_head
        problems = rpn_problems(model)
        stages = roi_stages(roi)
        if stages is None:
            problems.append(f'roi_head {type(roi).__name__} (StandardRoIHead or CascadeRoIHead '
                            'only)')
        for s, (bbox_ext, bbox_head, mask_ext, mask_head) in enumerate(stages or []):
            prefix = f'stage {s}: ' if len(stages) > 1 else ''
            problems += [prefix + p for p in head_problems(
                dict(bbox_roi_extractor=bbox_ext, mask_roi_extractor=mask_ext), bbox_head,
                mask_head)]
        refuse(model, problems)

    def setup_stages(self) -> None:
        """The RoI head's stages: RoI feature extractors (ONNX RoiAlign) and mmdet's heads."""
        stages = roi_stages(self.roi)
        self.stage_rois = nn.ModuleList(RoIFeatures(bbox_ext) for bbox_ext, *_ in stages)
        self.bbox_heads = [bbox_head for _, bbox_head, *_ in stages]  # a list: not re-registered
        if self.with_mask:
            self.stage_mask_rois = nn.ModuleList(RoIFeatures(m) for _, _, m, _ in stages)
            self.mask_heads = [mask_head for *_, mask_head in stages]
        self.last_bbox_head = self.bbox_heads[-1]
        self.num_classes = self.last_bbox_head.num_classes

    def proposals(self, feats: list[Tensor], height: Tensor, width: Tensor) -> Tensor:
        """RPN: (n, 4) proposals, best first."""
        cls_scores, bbox_preds = self.rpn(feats)
        coder = self.rpn.bbox_coder
        boxes, scores, levels = [], [], []
        for i, (cls, reg) in enumerate(zip(cls_scores, bbox_preds)):
            score = cls[0].permute(1, 2, 0).reshape(-1)
            score = score.sigmoid() if self.rpn.use_sigmoid_cls else \
                cls[0].permute(1, 2, 0).reshape(-1, 2).softmax(-1)[:, 0]
            deltas = reg[0].permute(1, 2, 0).reshape(-1, 4)
            anchors = grid_anchors(getattr(self, f'base_anchors{i}'), cls, self.strides[i],
                                   self.offset)
            if self.rpn_pre > 0:  # padded so that topk(nms_pre) exists at any size
                n = dynamic_len(score)
                score, idx = torch.cat([score, score.new_zeros(self.rpn_pre)]).topk(self.rpn_pre)
                idx = torch.minimum(idx, n - 1)
                deltas, anchors = deltas[idx], anchors[idx]
            boxes.append(delta2bbox(anchors, deltas, coder.means, coder.stds))
            scores.append(score)
            levels.append(torch.full_like(score, i, dtype=torch.long))
        boxes = clip_boxes(torch.cat(boxes), height, width)
        scores, levels = torch.cat(scores), torch.cat(levels)
        if self.rpn_min_size >= 0:
            wh = boxes[:, 2:] - boxes[:, :2]
            scores = torch.where((wh > self.rpn_min_size).all(-1), scores,
                                 torch.zeros_like(scores))
        return boxes[nms_keep(boxes, scores, levels, self.rpn_iou, self.rpn_max)]

    def regress(self, head: nn.Module, rois: Tensor, cls: Tensor, reg: Tensor,
                height: Tensor, width: Tensor) -> Tensor:
        """``BBoxHead.regress_by_class``: rois (n, 4), logits (n, C + 1), deltas (n, 4 or 4 C)
        -> refined rois (n, 4), clipped to the image."""
        if not head.reg_class_agnostic:
            label = cls[:, :-1].argmax(1)
            reg = reg.reshape(-1, head.num_classes, 4)[torch.arange(reg.shape[0]), label]
        coder = head.bbox_coder
        return clip_boxes(delta2bbox(rois, reg, coder.means, coder.stds), height, width)

    def refine(self, feats: list[Tensor], rois: Tensor, height: Tensor, width: Tensor
               ) -> tuple[Tensor, Tensor, Tensor]:
        """Every stage's bbox head: (last rois (n, 4), stage-averaged class logits (n, C + 1),
        last deltas (n, 4 or 4 C)) for :meth:`detect`."""
        logits, last = [], len(self.bbox_heads) - 1
        for s, (extract, head) in enumerate(zip(self.stage_rois, self.bbox_heads)):
            cls, reg = head(extract(feats, rois))
            logits.append(cls)
            if s < last:  # the next stage's RoIs
                rois = self.regress(head, rois, cls, reg, height, width)
        return rois, sum(logits) / float(len(logits)), reg

    def detect(self, rois: Tensor, cls: Tensor, reg: Tensor, height: Tensor, width: Tensor
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """mmdet's ``BBoxHead.predict_by_feat``: softmax scores, class-specific boxes decoded
        from ``rois`` and clipped, scores <= score_thr dropped, class-aware NMS, top
        ``max_per_img`` -> num_dets (1,), boxes (1, K, 4), scores (1, K), labels (1, K)."""
        head = self.last_bbox_head
        C = self.num_classes
        scores = cls.softmax(-1)[:, :C]
        n_reg = 1 if head.reg_class_agnostic else C
        priors = rois[:, None, :].expand(-1, n_reg, 4).reshape(-1, 4)
        coder = head.bbox_coder
        boxes = delta2bbox(priors, reg.reshape(-1, 4), coder.means, coder.stds)
        boxes = clip_boxes(boxes, height, width).reshape(-1, n_reg, 4).expand(-1, C, 4)
        boxes = boxes.reshape(-1, 4)
        flat = scores.reshape(-1)
        labels = torch.arange(C)[None].expand_as(scores).reshape(-1)
        flat = torch.where(flat > self.score_thr, flat, torch.zeros_like(flat))
        return multiclass_nms(boxes, flat, labels, self.iou_thr, self.max_per_img)

    def mask_probs(self, feats: list[Tensor], boxes: Tensor, labels: Tensor) -> Tensor:
        """(K, 28, 28) mask probabilities of each box's class, averaged over the stages:
        boxes (K, 4), labels (K,)."""
        index = torch.arange(self.max_per_img), labels.clamp(min=0)
        probs = [head(extract(feats, boxes))[index].sigmoid()
                 for extract, head in zip(self.stage_mask_rois, self.mask_heads)]
        return sum(probs) / float(len(probs))

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        height, width = dynamic_size(image)
        feats = list(self.model.extract_feat(self.preprocess(image)))
        rois = self.proposals(feats, height, width)
        num, boxes, scores, labels = self.detect(*self.refine(feats, rois, height, width),
                                                 height, width)
        if not self.with_mask:
            return num, boxes, scores, labels
        return num, boxes, scores, labels, self.mask_probs(feats, boxes[0], labels[0])[None]
