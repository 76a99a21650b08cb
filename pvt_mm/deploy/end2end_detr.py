"""DETR-family detectors (DETR, Deformable DETR incl. box refinement / two-stage, DINO) as one
graph: image in, fixed-size detections out.

:class:`End2EndDETR` computes what mmdet's ``DetectionTransformer.predict(..., rescale=False)``
computes for one image, with every size read from the tensors at run time:

1. :class:`~.end2end_det.Preprocess` (BGR -> RGB, normalisation, padding to the size divisor),
   backbone, neck (``model.extract_feat``);
2. ``pre_transformer`` (:meth:`End2EndDETR.pre_transformer`, replacing the detector's, which
   drops the padding mask while exporting): per level the padding mask (the padded image's mask,
   0 inside the unpadded input, resized nearest to the level as ``F.interpolate`` does), the
   sine positional encoding of the mask, the flattened features (+ level embeddings), the
   levels' (h, w) as a tensor, their start indices and valid ratios;
3. the detector's own ``forward_encoder``, ``pre_decoder`` (two-stage: encoder proposals, the top
   ``num_queries`` of them as reference points) and ``forward_decoder``, run inside
   :func:`traceable_detr`, which swaps in versions of mmcv's / mmdet's code that loop over the
   levels with Python ints (tracing would freeze them): deformable attention
   (:func:`~.ops.multi_scale_deformable_attn`, ONNX ``GridSample``), the encoder's reference
   points and the two-stage encoder proposals;
4. the head's forward and ``_predict_by_feat_single`` on the last decoder layer: softmax heads
   (DETR): scores / labels the maximum over the non-background classes, the top
   ``max_per_img`` queries; sigmoid heads (Deformable DETR, DINO): the top ``max_per_img``
   (query, class) pairs; boxes cx cy w h -> x1 y1 x2 y2, scaled by the unpadded input's size and
   clamped to it.

Outputs as :class:`~.end2end_det.End2EndDetector`: ``num_dets`` (1,) int64 (= K, there is no
score threshold), ``boxes`` (1, K, 4), ``scores`` (1, K), ``labels`` (1, K) int64, K =
``max_per_img``. No NMS. Batch 1.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .end2end_det import Preprocess, clip_boxes
from .ops import dynamic_size, multi_scale_deformable_attn

SUPPORTED = {'DETR': 'DETRHead', 'DeformableDETR': 'DeformableDETRHead', 'DINO': 'DINOHead'}


def padding_mask(feat: Tensor, pad_h: Tensor, pad_w: Tensor, img_h: Tensor, img_w: Tensor
                 ) -> tuple[Tensor, Tensor]:
    """The padding mask of one level and its valid ratio.

    feat (1, C, h, w); sizes 0-d int64 -> mask (1, h, w) bool, True on padding: mmdet's
    (pad_h, pad_w) mask resized nearest to (h, w) (source index floor(i * in / out) in float32,
    as ``F.interpolate``); valid ratio (2,) (valid width / w, valid height / h)."""
    h, w = dynamic_size(feat)

    def valid(out: Tensor, size_in: Tensor, limit: Tensor) -> Tensor:
        scale = size_in.float() / out.float()
        src = (torch.arange(out).float() * scale).floor().long()
        return torch.minimum(src, size_in - 1) < limit

    rows, cols = valid(h, pad_h, img_h), valid(w, pad_w, img_w)
    mask = ~(rows[:, None] & cols[None, :])[None]
    # mmdet's get_valid_ratio: valid rows of column 0, valid columns of row 0
    ratio = torch.stack([(~mask[0, 0]).sum().float() / w.float(),
                         (~mask[0, :, 0]).sum().float() / h.float()])
    return mask, ratio


def encoder_reference_points(spatial_shapes: Tensor, valid_ratios: Tensor,
                             device: torch.device | str | None = None) -> Tensor:
    """``DeformableDetrTransformerEncoder.get_encoder_reference_points`` with run-time level
    sizes: spatial_shapes (L, 2), valid_ratios (bs, L, 2) -> (bs, N, L, 2)."""
    refs = []
    for lvl in range(valid_ratios.shape[1]):
        h, w = spatial_shapes[lvl, 0], spatial_shapes[lvl, 1]
        ref_y, ref_x = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5,
                                      torch.arange(w, dtype=torch.float32) + 0.5, indexing='ij')
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
        refs.append(torch.stack((ref_x, ref_y), -1))
    return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]


def encoder_output_proposals(self: nn.Module, memory: Tensor, memory_mask: Tensor | None,
                             spatial_shapes: Tensor) -> tuple[Tensor, Tensor]:
    """``DeformableDETR.gen_encoder_output_proposals`` with run-time level sizes: memory
    (bs, N, C), memory_mask (bs, N) or None, spatial_shapes (L, 2) -> (output memory (bs, N, C),
    proposals (bs, N, 4) in inverse-sigmoid space, inf where invalid)."""
    bs = memory.size(0)
    sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    ends = sizes.cumsum(0)
    proposals = []
    for lvl in range(spatial_shapes.shape[0]):
        h, w = spatial_shapes[lvl, 0], spatial_shapes[lvl, 1]
        if memory_mask is not None:
            level = memory_mask.index_select(1, torch.arange(ends[lvl] - sizes[lvl], ends[lvl]))
            level = torch.onnx.operators.reshape_from_tensor_shape(
                level, torch.stack([torch.tensor(bs), h, w]))
            valid_h = torch.sum(~level[:, :, 0], 1).unsqueeze(-1)
            valid_w = torch.sum(~level[:, 0, :], 1).unsqueeze(-1)
            scale = torch.cat([valid_w, valid_h], 1).view(bs, 1, 1, 2)
        else:
            scale = torch.stack([w, h]).view(1, 1, 1, 2)
        grid_y, grid_x = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                                        torch.arange(w, dtype=torch.float32), indexing='ij')
        grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)
        grid = (grid.unsqueeze(0).expand(bs, -1, -1, -1) + 0.5) / scale
        wh = torch.ones_like(grid) * 0.05 * (2.0 ** lvl)
        proposals.append(torch.cat((grid, wh), -1).view(bs, -1, 4))
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).sum(-1, keepdim=True) == 4
    proposals = torch.log(proposals / (1 - proposals))
    out = memory
    if memory_mask is not None:
        proposals = proposals.masked_fill(memory_mask.unsqueeze(-1), float('inf'))
        out = out.masked_fill(memory_mask.unsqueeze(-1), float(0))
    proposals = proposals.masked_fill(~valid, float('inf'))
    out = out.masked_fill(~valid, float(0))
    return self.memory_trans_norm(self.memory_trans_fc(out)), proposals


@contextlib.contextmanager
def traceable_detr() -> Iterator[None]:
    """mmcv's ``multi_scale_deformable_attn_pytorch``, mmdet's encoder reference points and
    two-stage encoder proposals replaced by the run-time-size versions of this module (and
    :mod:`.ops`) while the block runs; restored afterwards."""
    from mmcv.ops import multi_scale_deform_attn as msda
    from mmdet.models.detectors import DeformableDETR
    from mmdet.models.layers import DeformableDetrTransformerEncoder as Encoder
    patches = [(msda, 'multi_scale_deformable_attn_pytorch', multi_scale_deformable_attn),
               (Encoder, 'get_encoder_reference_points', staticmethod(encoder_reference_points)),
               (DeformableDETR, 'gen_encoder_output_proposals', encoder_output_proposals)]
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


class End2EndDETR(nn.Module):
    """DETR / Deformable DETR / DINO + preprocessing + postprocessing (module docstring).

    forward: (1, 3, H, W) float32 image (0-255, loaded channel order) -> num_dets (1,),
    boxes (1, K, 4), scores (1, K), labels (1, K)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        name, head = type(model).__name__, model.bbox_head
        if SUPPORTED.get(name) != type(head).__name__:
            raise ValueError(f'{name} with {type(head).__name__}: end-to-end export takes DETR '
                             '(DETRHead), DeformableDETR (DeformableDETRHead) and DINO (DINOHead)')
        self.preprocess = Preprocess.from_model(model)
        self.model, self.head = model, head
        self.deformable = name != 'DETR'
        self.sigmoid = bool(head.loss_cls.use_sigmoid)
        self.num_classes = int(head.num_classes)
        candidates = model.num_queries * (self.num_classes if self.sigmoid else 1)
        self.max_per_img = int((head.test_cfg or {}).get('max_per_img', model.num_queries))
        if self.max_per_img > candidates:
            raise ValueError(f'{name}: test_cfg.max_per_img {self.max_per_img} > the '
                             f'{candidates} candidates (queries{" x classes" * self.sigmoid})')
        self.score_thr, self.iou_thr, self.nms_pre, self.with_mask = None, None, None, False

    def pre_transformer(self, feats: tuple[Tensor, ...], pad_h: Tensor, pad_w: Tensor,
                        img_h: Tensor, img_w: Tensor) -> tuple[dict, dict]:
        """The detector's ``pre_transformer`` with the padding mask always computed (module
        docstring, step 2): neck levels (1, C, h_l, w_l) -> encoder and decoder inputs."""
        model = self.model
        if not self.deformable:  # DETR: the last level only
            mask, _ = padding_mask(feats[-1], pad_h, pad_w, img_h, img_w)
            pos = model.positional_encoding(mask).flatten(2).permute(0, 2, 1)
            feat = feats[-1].flatten(2).permute(0, 2, 1)
            mask = mask.flatten(1)
            return (dict(feat=feat, feat_mask=mask, feat_pos=pos),
                    dict(memory_mask=mask, memory_pos=pos))
        flat, pos, masks, shapes, ratios = [], [], [], [], []
        for lvl, feat in enumerate(feats):
            mask, ratio = padding_mask(feat, pad_h, pad_w, img_h, img_w)
            embed = model.positional_encoding(mask).flatten(2).permute(0, 2, 1)
            pos.append(embed + model.level_embed[lvl].view(1, 1, -1))
            flat.append(feat.flatten(2).permute(0, 2, 1))
            masks.append(mask.flatten(1))
            shapes.append(torch.stack(dynamic_size(feat)))
            ratios.append(ratio)
        spatial_shapes = torch.stack(shapes)  # (L, 2) int64
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)),
                                       spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack(ratios)[None]  # (1, L, 2)
        mask = torch.cat(masks, 1)
        common = dict(spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                      valid_ratios=valid_ratios)
        return (dict(feat=torch.cat(flat, 1), feat_mask=mask, feat_pos=torch.cat(pos, 1),
                     **common), dict(memory_mask=mask, **common))

    def detections(self, cls: Tensor, box: Tensor, img_h: Tensor, img_w: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``_predict_by_feat_single``: cls (Q, C or C + 1) logits, box (Q, 4) cx cy w h in
        [0, 1] -> num_dets (1,), boxes (1, K, 4), scores (1, K), labels (1, K)."""
        K = self.max_per_img
        if self.sigmoid:
            scores, index = cls.sigmoid().reshape(-1).topk(K)
            labels, box = index % self.num_classes, box[index // self.num_classes]
        else:
            scores, labels = cls.softmax(-1)[:, :-1].max(-1)
            scores, index = scores.topk(K)
            box, labels = box[index], labels[index]
        cx, cy, w, h = box.split((1, 1, 1, 1), dim=-1)
        xyxy = torch.cat([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)
        size = torch.stack([img_w, img_h, img_w, img_h]).float()
        boxes = clip_boxes(xyxy * size, img_h, img_w)
        num = torch.onnx.operators.shape_as_tensor(scores)
        return num, boxes.reshape(1, K, 4), scores.reshape(1, K), labels.reshape(1, K)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        model = self.model
        img_h, img_w = dynamic_size(image)
        x = self.preprocess(image)
        pad_h, pad_w = dynamic_size(x)
        with traceable_detr():
            enc_in, dec_in = self.pre_transformer(model.extract_feat(x), pad_h, pad_w,
                                                  img_h, img_w)
            dec_more, _ = model.pre_decoder(**model.forward_encoder(**enc_in))
            dec_in.update(dec_more)
            out = model.forward_decoder(**dec_in)
        if self.deformable:
            cls, box = self.head(out['hidden_states'], out['references'])
        else:
            cls, box = self.head(out['hidden_states'][-1].unsqueeze(0))
        return self.detections(cls[-1][0], box[-1][0], img_h, img_w)
