"""DETR-family detectors (DETR, Deformable DETR incl. box refinement / two-stage, DINO) as one
graph: image in, fixed-size detections out.

:class:`End2EndDETR` computes what mmdet's ``DetectionTransformer.predict(..., rescale=False)``
computes for one image, with every size read from the tensors at run time:

1. :class:`~.common.Preprocess` (BGR -> RGB, normalisation, padding to the size divisor),
   backbone, neck (``model.extract_feat``);
2. ``pre_transformer`` (:meth:`End2EndDETR.pre_transformer`, replacing the detector's, which
   drops the padding mask while exporting): per level the padding mask (the padded image's mask,
   0 inside the unpadded input, resized nearest to the level as ``F.interpolate`` does), the
   sine positional encoding of the mask, the flattened features (+ level embeddings), the
   levels' (h, w) as a tensor (under the dynamo exporter also as symbolic ints,
   :func:`~.ops.tag_level_sizes`), their start indices and valid ratios;
3. the detector's own ``forward_encoder``, ``pre_decoder`` (two-stage: encoder proposals, the top
   ``num_queries`` of them as reference points) and ``forward_decoder``; while exporting,
   :meth:`End2EndDETR.traceable_patches` swap in versions of mmcv's / mmdet's code that loop
   over the levels with Python ints (tracing would freeze them): deformable attention
   (:func:`~.ops.multi_scale_deformable_attn`, ONNX ``GridSample``), the encoder's reference
   points and the two-stage encoder proposals (an eager forward runs mmcv's / mmdet's own);
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

import torch
from torch import Tensor, nn

from .common import End2EndModule, Patch, Preprocess, clip_boxes
from .ops import (dynamic_len, dynamic_size, dynamo_exporting, level_sizes,
                  multi_scale_deformable_attn, size_dims, split_levels, tag_level_sizes,
                  unflatten_level)

SUPPORTED = {'DETR': 'DETRHead', 'DeformableDETR': 'DeformableDETRHead', 'DINO': 'DINOHead'}


def padding_mask(feat: Tensor, pad_h: Tensor, pad_w: Tensor, img_h: Tensor, img_w: Tensor
                 ) -> tuple[Tensor, Tensor]:
    """The padding mask of one level and its valid ratio.

    feat (1, C, h, w); sizes 0-d int64 -> mask (1, h, w) bool, True on padding: mmdet's
    (pad_h, pad_w) mask resized nearest to (h, w) (source index floor(i * in / out) in float32,
    as ``F.interpolate``); valid ratio (2,) (valid width / w, valid height / h)."""
    h, w = dynamic_size(feat)
    hd, wd = size_dims(feat)  # sizes for arange (symbolic ints under the dynamo exporter)

    def valid(out: Tensor, count, size_in: Tensor, limit: Tensor) -> Tensor:
        scale = size_in.float() / out.float()
        src = (torch.arange(count).float() * scale).floor().long()
        return torch.minimum(src, size_in - 1) < limit

    rows, cols = valid(h, hd, pad_h, img_h), valid(w, wd, pad_w, img_w)
    mask = ~(rows[:, None] & cols[None, :])[None]
    # mmdet's get_valid_ratio: valid rows of column 0, valid columns of row 0
    ratio = torch.stack([(~mask[0, 0]).sum().float() / w.float(),
                         (~mask[0, :, 0]).sum().float() / h.float()])
    return mask, ratio


def sine_positional_encoding(encoding: nn.Module, mask: Tensor) -> Tensor:
    """mmdet's ``SinePositionalEncoding.forward(mask)`` (``encoding``'s settings): mask (B, h, w)
    bool -> (B, 2 num_feats, h, w). The normaliser, the last row / column of the cumulative
    sums, is taken with ``select`` where mmdet slices ``[-1:]``: a slice's length is an
    expression that torch.export's shape solver cannot decide at a level of size
    ceil(padded / 64) (Deformable DETR's and DINO's extra level)."""
    not_mask = 1 - mask.to(torch.int)
    y_embed = not_mask.cumsum(1, dtype=torch.float32)
    x_embed = not_mask.cumsum(2, dtype=torch.float32)
    if encoding.normalize:
        y_embed = (y_embed + encoding.offset) / \
            (y_embed.select(1, -1)[:, None, :] + encoding.eps) * encoding.scale
        x_embed = (x_embed + encoding.offset) / \
            (x_embed.select(2, -1)[:, :, None] + encoding.eps) * encoding.scale
    dim_t = torch.arange(encoding.num_feats, dtype=torch.float32)
    dim_t = encoding.temperature ** (2 * (dim_t // 2) / encoding.num_feats)
    pos_x, pos_y = x_embed[..., None] / dim_t, y_embed[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def encoder_reference_points(spatial_shapes: Tensor, valid_ratios: Tensor,
                             device: torch.device | str | None = None) -> Tensor:
    """``DeformableDetrTransformerEncoder.get_encoder_reference_points`` with run-time level
    sizes (:func:`~.ops.level_sizes`): spatial_shapes (L, 2), valid_ratios (bs, L, 2) ->
    (bs, N, L, 2)."""
    refs = []
    for lvl, (h, w) in enumerate(level_sizes(spatial_shapes)):
        ref_y, ref_x = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5,
                                      torch.arange(w, dtype=torch.float32) + 0.5, indexing='ij')
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
        refs.append(torch.stack((ref_x, ref_y), -1))
    return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]


def _scalar(size) -> Tensor:
    """A size (0-d int64 tensor or symbolic int) as a 0-d int64 tensor."""
    return size if isinstance(size, Tensor) else torch.scalar_tensor(size, dtype=torch.long)


def encoder_output_proposals(self: nn.Module, memory: Tensor, memory_mask: Tensor | None,
                             spatial_shapes: Tensor) -> tuple[Tensor, Tensor]:
    """``DeformableDETR.gen_encoder_output_proposals`` with run-time level sizes: memory
    (bs, N, C), memory_mask (bs, N) or None, spatial_shapes (L, 2) -> (output memory (bs, N, C),
    proposals (bs, N, 4) in inverse-sigmoid space, inf where invalid)."""
    bs = memory.size(0)
    sizes = level_sizes(spatial_shapes)
    masks = split_levels(memory_mask, 1, spatial_shapes) if memory_mask is not None else None
    proposals = []
    for lvl, (h, w) in enumerate(sizes):
        if masks is not None:
            level = unflatten_level(masks[lvl], (bs,), h, w)
            valid_h = torch.sum(~level[:, :, 0], 1).unsqueeze(-1)
            valid_w = torch.sum(~level[:, 0, :], 1).unsqueeze(-1)
            scale = torch.cat([valid_w, valid_h], 1).view(bs, 1, 1, 2)
        else:
            scale = torch.stack([_scalar(w), _scalar(h)]).view(1, 1, 1, 2)
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


def deformable_attention_forward(self: nn.Module, query: Tensor, key: Tensor | None = None,
                                 value: Tensor | None = None, identity: Tensor | None = None,
                                 query_pos: Tensor | None = None,
                                 key_padding_mask: Tensor | None = None,
                                 reference_points: Tensor | None = None,
                                 spatial_shapes: Tensor | None = None,
                                 level_start_index: Tensor | None = None, **kwargs) -> Tensor:
    """mmcv's ``MultiScaleDeformableAttention.forward`` (CPU path) without its check that the
    level sizes add up to the value's length: a Python ``assert`` on tensor values, which
    torch.export cannot decide (the sizes are data there); the split of
    :func:`~.ops.multi_scale_deformable_attn` checks the same on the symbolic sizes."""
    value = query if value is None else value
    identity = query if identity is None else identity
    if query_pos is not None:
        query = query + query_pos
    if not self.batch_first:
        query, value = query.permute(1, 0, 2), value.permute(1, 0, 2)
    bs, num_query, _ = query.shape
    num_value = value.shape[1]
    value = self.value_proj(value)
    if key_padding_mask is not None:
        value = value.masked_fill(key_padding_mask[..., None], 0.0)
    value = value.view(bs, num_value, self.num_heads, -1)
    offsets = self.sampling_offsets(query).view(bs, num_query, self.num_heads, self.num_levels,
                                                self.num_points, 2)
    weights = self.attention_weights(query).view(
        bs, num_query, self.num_heads, self.num_levels * self.num_points).softmax(-1)
    weights = weights.view(bs, num_query, self.num_heads, self.num_levels, self.num_points)
    if reference_points.shape[-1] == 2:
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
        locations = reference_points[:, :, None, :, None, :] \
            + offsets / normalizer[None, None, None, :, None, :]
    elif reference_points.shape[-1] == 4:
        locations = reference_points[:, :, None, :, None, :2] \
            + offsets / self.num_points * reference_points[:, :, None, :, None, 2:] * 0.5
    else:
        raise ValueError('Last dim of reference_points must be 2 or 4, but get '
                         f'{reference_points.shape[-1]} instead.')
    output = self.output_proj(multi_scale_deformable_attn(value, spatial_shapes, locations,
                                                          weights))
    if not self.batch_first:
        output = output.permute(1, 0, 2)
    return self.dropout(output) + identity


class End2EndDETR(End2EndModule):
    """DETR / Deformable DETR / DINO + preprocessing + postprocessing (module docstring).

    forward: (1, 3, H, W) float32 image (0-255, loaded channel order) -> num_dets (1,),
    boxes (1, K, 4), scores (1, K), labels (1, K)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        name, head = type(model).__name__, model.bbox_head
        if SUPPORTED.get(name) != type(head).__name__:
            raise ValueError(f'{name} with {type(head).__name__}: end-to-end export takes DETR '
                             '(DETRHead), DeformableDETR (DeformableDETRHead) and DINO (DINOHead)')
        if type(model.positional_encoding).__name__ != 'SinePositionalEncoding':
            raise ValueError(f'{name}: positional encoding '
                             f'{type(model.positional_encoding).__name__} (SinePositionalEncoding '
                             'only)')
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

    def traceable_patches(self) -> list[Patch]:
        """Applied by the exporter (:func:`~.common.traceable`): mmcv's deformable attention
        (``MultiScaleDeformableAttention.forward``, ``multi_scale_deformable_attn_pytorch``),
        mmdet's encoder reference points and two-stage encoder proposals replaced by the
        run-time-size versions of this module and :mod:`.ops`."""
        from mmcv.ops import MultiScaleDeformableAttention as Attention
        from mmcv.ops import multi_scale_deform_attn as msda
        from mmdet.models.detectors import DeformableDETR
        from mmdet.models.layers import DeformableDetrTransformerEncoder as Encoder
        return [(msda, 'multi_scale_deformable_attn_pytorch', multi_scale_deformable_attn),
                (Attention, 'forward', deformable_attention_forward),
                (Encoder, 'get_encoder_reference_points',
                 staticmethod(encoder_reference_points)),
                (DeformableDETR, 'gen_encoder_output_proposals', encoder_output_proposals)]

    def positions(self, mask: Tensor) -> Tensor:
        """Sine positional encoding of a level's padding mask (1, h, w) -> (1, h w, C)."""
        return sine_positional_encoding(self.model.positional_encoding, mask).flatten(2) \
            .permute(0, 2, 1)

    def pre_transformer(self, feats: tuple[Tensor, ...], pad_h: Tensor, pad_w: Tensor,
                        img_h: Tensor, img_w: Tensor) -> tuple[dict, dict]:
        """The detector's ``pre_transformer`` with the padding mask always computed (module
        docstring, step 2): neck levels (1, C, h_l, w_l) -> encoder and decoder inputs."""
        model = self.model
        if not self.deformable:  # DETR: the last level only
            mask, _ = padding_mask(feats[-1], pad_h, pad_w, img_h, img_w)
            pos = self.positions(mask)
            feat = feats[-1].flatten(2).permute(0, 2, 1)
            mask = mask.flatten(1)
            return (dict(feat=feat, feat_mask=mask, feat_pos=pos),
                    dict(memory_mask=mask, memory_pos=pos))
        flat, pos, masks, shapes, ratios = [], [], [], [], []
        for lvl, feat in enumerate(feats):
            mask, ratio = padding_mask(feat, pad_h, pad_w, img_h, img_w)
            embed = self.positions(mask)
            pos.append(embed + model.level_embed[lvl].view(1, 1, -1))
            flat.append(feat.flatten(2).permute(0, 2, 1))
            masks.append(mask.flatten(1))
            shapes.append(torch.stack(dynamic_size(feat)))
            ratios.append(ratio)
        spatial_shapes = torch.stack(shapes)  # (L, 2) int64
        if dynamo_exporting():  # the levels' symbolic sizes for the patched functions
            tag_level_sizes(spatial_shapes, [size_dims(f) for f in feats])
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
        num = dynamic_len(scores).reshape(1)
        return num, boxes.reshape(1, K, 4), scores.reshape(1, K), labels.reshape(1, K)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        model = self.model
        img_h, img_w = dynamic_size(image)
        x = self.preprocess(image)
        pad_h, pad_w = dynamic_size(x)
        enc_in, dec_in = self.pre_transformer(model.extract_feat(x), pad_h, pad_w, img_h, img_w)
        dec_more, _ = model.pre_decoder(**model.forward_encoder(**enc_in))
        dec_in.update(dec_more)
        out = model.forward_decoder(**dec_in)
        if self.deformable:
            cls, box = self.head(out['hidden_states'], out['references'])
        else:
            cls, box = self.head(out['hidden_states'][-1].unsqueeze(0))
        return self.detections(cls[-1][0], box[-1][0], img_h, img_w)
