"""Cascade (Mask) R-CNN with a ``CascadeRoIHead`` as one graph.

:class:`End2EndCascade` computes what mmdet's ``CascadeRoIHead.predict`` computes, on top of
:class:`~.end2end_twostage.End2EndTwoStage` (preprocessing, backbone, neck, RPN):

1. per stage ``s``: RoI features (ONNX ``RoiAlign``, :class:`~.end2end_twostage.RoIFeatures`)
   and the stage's bbox head on the current RoIs; before the last stage the RoIs are refined
   as ``BBoxHead.regress_by_class``: each RoI's deltas (of its arg-max foreground class when
   the regression is class-specific) decoded with the stage's coder and clipped to the image;
2. the class logits of all stages averaged (mmdet averages the logits, then the last head's
   ``predict_by_feat`` takes the softmax), the last stage's deltas decoded from the last RoIs,
   score threshold, class-aware NMS, top ``max_per_img`` (:meth:`End2EndTwoStage.detect`);
3. Cascade Mask R-CNN: every stage's mask head on the final boxes, the sigmoids averaged
   (mmdet's ``merge_aug_masks``), each box's class channel: ``masks`` (1, K, 28, 28).

Outputs and batch as :class:`~.end2end_twostage.End2EndTwoStage`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .end2end_det import clip_boxes, delta2bbox
from .end2end_twostage import (End2EndTwoStage, RoIFeatures, head_problems, refuse,
                               rpn_problems)


class End2EndCascade(End2EndTwoStage):
    """Cascade (Mask) R-CNN + preprocessing + postprocessing (module docstring).

    forward: (1, 3, H, W) float32 image (0-255, loaded channel order) -> num_dets, boxes,
    scores, labels[, masks]."""

    @staticmethod
    def check(model: nn.Module) -> None:
        from mmdet.models.roi_heads import CascadeRoIHead
        roi = model.roi_head
        problems = rpn_problems(model)
        if type(roi) is not CascadeRoIHead:
            problems.append(f'roi_head {type(roi).__name__} (CascadeRoIHead only)')
        else:
            for s in range(roi.num_stages):
                with_mask = roi.with_mask
                problems += [f'stage {s}: {p}' for p in head_problems(
                    dict(bbox_roi_extractor=roi.bbox_roi_extractor[s],
                         mask_roi_extractor=roi.mask_roi_extractor[s] if with_mask else None),
                    roi.bbox_head[s], roi.mask_head[s] if with_mask else None)]
            if roi.with_mask and (roi.share_roi_extractor or len(roi.mask_head) != roi.num_stages):
                problems.append('a mask head or RoI extractor shared between stages')
        refuse(model, sorted(set(problems), key=problems.index))

    def setup_stages(self) -> None:
        roi = self.roi
        self.num_stages = int(roi.num_stages)
        self.stage_rois = nn.ModuleList(RoIFeatures(e) for e in roi.bbox_roi_extractor)
        if self.with_mask:
            self.stage_mask_rois = nn.ModuleList(RoIFeatures(e) for e in roi.mask_roi_extractor)
        self.last_bbox_head = roi.bbox_head[-1]
        self.num_classes = self.last_bbox_head.num_classes

    def regress(self, stage: int, rois: Tensor, cls: Tensor, reg: Tensor, height: Tensor,
                width: Tensor) -> Tensor:
        """``BBoxHead.regress_by_class``: rois (n, 4), logits (n, C + 1), deltas (n, 4 or 4 C)
        -> refined rois (n, 4), clipped to the image."""
        head = self.roi.bbox_head[stage]
        if not head.reg_class_agnostic:
            label = cls[:, :-1].argmax(1)
            reg = reg.reshape(-1, head.num_classes, 4)[torch.arange(reg.shape[0]), label]
        coder = head.bbox_coder
        return clip_boxes(delta2bbox(rois, reg, coder.means, coder.stds), height, width)

    def refine(self, feats: list[Tensor], rois: Tensor, height: Tensor, width: Tensor
               ) -> tuple[Tensor, Tensor, Tensor]:
        """All stages: (last rois (n, 4), stage-averaged logits (n, C + 1), last deltas)."""
        logits = []
        for s in range(self.num_stages):
            cls, reg = self.roi.bbox_head[s](self.stage_rois[s](feats, rois))
            logits.append(cls)
            if s < self.num_stages - 1:
                rois = self.regress(s, rois, cls, reg, height, width)
        return rois, sum(logits) / float(len(logits)), reg

    def mask_probs(self, feats: list[Tensor], boxes: Tensor, labels: Tensor) -> Tensor:
        probs = [head(rois(feats, boxes)).sigmoid()
                 for head, rois in zip(self.roi.mask_head, self.stage_mask_rois)]
        merged = sum(probs) / float(len(probs))
        return merged[torch.arange(self.max_per_img), labels.clamp(min=0)]
