"""Sparse R-CNN (``EmbeddingRPNHead`` + ``SparseRoIHead`` of ``DIIHead`` stages) as one graph.

:class:`End2EndSparseRCNN` computes what mmdet's ``SparseRCNN.predict(..., rescale=False)``
computes, with no NMS anywhere:

1. :class:`~.common.Preprocess`, backbone, neck (``model.extract_feat``);
2. ``EmbeddingRPNHead``: the learnt proposal boxes (cx, cy, w, h in [0, 1]) as x1 y1 x2 y2
   scaled by the unpadded image size (w, h, w, h), read from the input's shape at run time;
   the learnt proposal features as the initial object features (1, P, C);
3. per stage ``s``: RoI features of the current boxes (ONNX ``RoiAlign`` per FPN level,
   :class:`~.common.RoIFeatures`), the stage's ``DIIHead`` itself (self-attention
   over the proposals, dynamic instance-interactive conv, FFN, class / box branches) on them
   and the object features, then the boxes refined as ``BBoxHead.refine_bboxes`` /
   ``regress_by_class``: the class-agnostic deltas decoded from the current boxes with the
   stage's ``DeltaXYWHBBoxCoder`` and clamped to the image only where the coder clamps
   (``clip_border``; mmdet's Sparse R-CNN configs do not);
4. last stage: class scores (sigmoid, or softmax less the background column), the top
   ``max_per_img`` of the flattened (proposal, class) scores, labels = index % num_classes,
   boxes = the refined box of proposal index // num_classes.

Outputs as :class:`~.end2end_det.End2EndDetector`: ``num_dets`` (1,) int64 (K, unless fewer
proposals x classes exist), ``boxes`` (1, K, 4), ``scores`` (1, K), ``labels`` (1, K) int64,
K = ``max_per_img``, highest score first, rows past ``num_dets`` zero with label -1. Batch 1.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .common import (End2EndModule, Preprocess, RoIFeatures, clip_boxes, delta2bbox,
                     head_problems, refuse)
from .ops import dynamic_size


def sparse_problems(model: nn.Module) -> list[str]:
    """What the graph cannot reproduce in ``model``'s proposal head and RoI head."""
    from mmdet.models.dense_heads import EmbeddingRPNHead
    from mmdet.models.roi_heads import SparseRoIHead
    from mmdet.models.roi_heads.bbox_heads import DIIHead
    problems = []
    if type(model.rpn_head) is not EmbeddingRPNHead:
        problems.append(f'rpn_head {type(model.rpn_head).__name__} (EmbeddingRPNHead only)')
    roi = model.roi_head
    if type(roi) is not SparseRoIHead:
        return problems + [f'roi_head {type(roi).__name__} (SparseRoIHead only)']
    if roi.with_mask:
        problems.append(f'mask head {type(roi.mask_head[-1]).__name__} (boxes only)')
    for s in range(roi.num_stages):
        head = roi.bbox_head[s]
        if type(head) is not DIIHead:
            problems.append(f'stage {s}: bbox head {type(head).__name__} (DIIHead only)')
            continue
        problems += [f'stage {s}: {p}' for p in head_problems(
            dict(bbox_roi_extractor=roi.bbox_roi_extractor[s]), head, None)]
    return problems


class End2EndSparseRCNN(End2EndModule):
    """Sparse R-CNN + preprocessing + postprocessing (module docstring).

    forward: (1, 3, H, W) float32 image (0-255, loaded channel order) -> num_dets (1,),
    boxes (1, K, 4), scores (1, K), labels (1, K)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        refuse(model, sparse_problems(model))
        self.preprocess = Preprocess.from_model(model)
        self.model, self.rpn, self.roi = model, model.rpn_head, model.roi_head
        self.num_stages = int(self.roi.num_stages)
        self.stage_rois = nn.ModuleList(RoIFeatures(e) for e in self.roi.bbox_roi_extractor)
        last = self.roi.bbox_head[-1]
        self.num_classes = int(last.num_classes)
        self.sigmoid = bool(last.loss_cls.use_sigmoid)
        self.num_proposals = int(self.rpn.num_proposals)
        self.max_per_img = int(self.roi.test_cfg.max_per_img)
        # read by metadata(): no score threshold, no NMS, no pre-NMS top-k; boxes only
        self.score_thr, self.iou_thr, self.nms_pre, self.with_mask = None, None, None, False

    def initial_proposals(self, height: Tensor, width: Tensor) -> tuple[Tensor, Tensor]:
        """``EmbeddingRPNHead._decode_init_proposals``: boxes (P, 4) x1 y1 x2 y2 in input
        pixels, object features (1, P, C)."""
        cx, cy, w, h = self.rpn.init_proposal_bboxes.weight.unbind(-1)
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)
        whwh = torch.stack([width, height, width, height]).to(boxes.dtype)
        return boxes * whwh, self.rpn.init_proposal_features.weight[None]

    def regress(self, stage: int, boxes: Tensor, deltas: Tensor, height: Tensor,
                width: Tensor) -> Tensor:
        """``BBoxHead.regress_by_class`` (class-agnostic, as DIIHead always is): boxes (P, 4)
        + deltas (P, 4) -> refined boxes (P, 4), clamped to the image if the coder clamps."""
        coder = self.roi.bbox_head[stage].bbox_coder
        boxes = delta2bbox(boxes, deltas, coder.means, coder.stds,
                           ctr_clamp=coder.ctr_clamp if coder.add_ctr_clamp else None)
        return clip_boxes(boxes, height, width) if coder.clip_border else boxes

    def top_k(self, boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``SparseRoIHead.predict_bbox``'s top-k: boxes (P, 4), scores (P, C) ->
        num_dets (1,), boxes (1, K, 4), scores (1, K), labels (1, K), best first; padded
        (zeros, label -1) where P * C < K (mmdet itself fails there)."""
        C, K = self.num_classes, self.max_per_img
        k = min(K, self.num_proposals * C)
        top, idx = scores.reshape(-1).topk(k)
        labels, boxes = idx % C, boxes[idx // C]
        if k < K:
            boxes = torch.cat([boxes, boxes.new_zeros((K - k, 4))])
            top = torch.cat([top, top.new_zeros((K - k,))])
            labels = torch.cat([labels, labels.new_full((K - k,), -1)])
        num = torch.tensor([k], dtype=torch.long)
        return num, boxes.reshape(1, K, 4), top.reshape(1, K), labels.reshape(1, K)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        height, width = dynamic_size(image)
        feats = list(self.model.extract_feat(self.preprocess(image)))
        boxes, obj_feats = self.initial_proposals(height, width)
        for s in range(self.num_stages):
            cls, deltas, obj_feats, _ = self.roi.bbox_head[s](self.stage_rois[s](feats, boxes),
                                                              obj_feats)
            boxes = self.regress(s, boxes, deltas[0], height, width)
        scores = cls[0].sigmoid() if self.sigmoid else cls[0].softmax(-1)[:, :-1]
        return self.top_k(boxes, scores)
