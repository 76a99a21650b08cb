"""The reference ops of the end-to-end graphs, each with the ONNX symbolic the exporter emits.

A reader sees here what the exported graph computes: every op is a ``torch.autograd.Function``
whose ``forward`` is the eager reference (what PyTorch runs, and what the tracer runs while
tracing) and whose ``symbolic`` is the one standard ONNX node written in its place.

- :class:`NonMaxSuppression`: ONNX ``NonMaxSuppression`` (opset 10+); eager: mmcv's ``nms``
  per (batch, class), boxes with score <= ``score_threshold`` dropped first.
- :class:`RoIAlign`: ONNX ``RoiAlign`` (opset 16+, ``coordinate_transformation_mode=
  'half_pixel'``, which is mmcv's ``aligned=True``: box corners * scale - 0.5, no minimum box
  size); eager: ``mmcv.ops.roi_align``.
- :func:`multiclass_nms`: class-aware NMS on one image's candidates as mmdet's ``batched_nms``
  does it (boxes shifted apart by class, one NMS), then the fixed-size, zero-padded top-k.
- :func:`dynamic_size`, :func:`pad_to_divisor`: sizes read from the tensor at run time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dynamic_size(x: Tensor) -> tuple[Tensor, Tensor]:
    """(H, W) of an NCHW tensor as 0-d int64 tensors: ONNX ``Shape`` + ``Gather`` in the graph,
    never the traced size baked in as a constant."""
    shape = torch.onnx.operators.shape_as_tensor(x)
    return shape[2], shape[3]


def pad_to_divisor(x: Tensor, divisor: int, value: float = 0.) -> Tensor:
    """Pad (N, C, H, W) at the bottom / right to multiples of ``divisor`` (mmengine's
    ``stack_batch`` / mmdet's preprocessor): ONNX ``Pad`` with pads computed from the shape."""
    if divisor <= 1:
        return x
    h, w = dynamic_size(x)
    pad_h = (divisor - h % divisor) % divisor
    pad_w = (divisor - w % divisor) % divisor
    return F.pad(x, [0, pad_w, 0, pad_h], value=value)


class NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (center_point_box = 0, corners x1, y1, x2, y2).

    boxes (B, N, 4), scores (B, C, N) -> selected (K, 3) int64 rows (batch, class, box), per
    (batch, class) in descending score order: boxes with score > ``score_threshold``, greedy
    suppression of IoU > ``iou_threshold``, at most ``max_per_class`` each."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
                score_threshold: float) -> Tensor:
        from mmcv.ops import nms
        rows = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                valid = torch.nonzero(scores[b, c] > score_threshold).flatten()
                if not valid.numel():
                    continue
                _, keep = nms(boxes[b, valid], scores[b, c, valid], iou_threshold)
                keep = valid[keep[:max_per_class]]
                rows.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c),
                                         keep], 1))
        return torch.cat(rows) if rows else boxes.new_zeros((0, 3), dtype=torch.long)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou_threshold: float,
                 score_threshold: float):
        def const(value, dtype):
            return g.op('Constant', value_t=torch.tensor([value], dtype=dtype))
        return g.op('NonMaxSuppression', boxes, scores, const(max_per_class, torch.long),
                    const(iou_threshold, torch.float), const(score_threshold, torch.float))


class RoIAlign(torch.autograd.Function):
    """ONNX ``RoiAlign`` (avg): feat (1, C, H, W), rois (n, 4) x1 y1 x2 y2 in input pixels,
    batch_indices (n,) int64 -> (n, C, out_h, out_w); mmcv's ``roi_align`` with
    ``aligned=True`` (``sampling_ratio`` 0: ceil(roi size / output size) samples per bin)."""

    @staticmethod
    def forward(ctx, feat: Tensor, rois: Tensor, batch_indices: Tensor, out_h: int, out_w: int,
                spatial_scale: float, sampling_ratio: int) -> Tensor:
        from mmcv.ops import roi_align
        boxes = torch.cat([batch_indices[:, None].to(rois.dtype), rois], 1)
        return roi_align(feat, boxes, (out_h, out_w), spatial_scale, sampling_ratio, 'avg', True)

    @staticmethod
    def symbolic(g, feat, rois, batch_indices, out_h: int, out_w: int, spatial_scale: float,
                 sampling_ratio: int):
        return g.op('RoiAlign', feat, rois, batch_indices, mode_s='avg',
                    coordinate_transformation_mode_s='half_pixel', output_height_i=out_h,
                    output_width_i=out_w, spatial_scale_f=spatial_scale,
                    sampling_ratio_i=sampling_ratio)


def nms_keep(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float,
             max_num: int) -> Tensor:
    """Indices (k,) int64 of the candidates class-aware NMS keeps, highest score first, at most
    ``max_num`` (scores <= 0: not candidates); see :func:`multiclass_nms`."""
    offsets = labels.to(boxes.dtype)[:, None] * (boxes.max() + 1)
    keep = NonMaxSuppression.apply((boxes + offsets)[None], scores[None, None], max_num,
                                   iou_threshold, 0.)[:, 2]
    return keep[scores[keep].argsort(descending=True)]  # already in that order; made explicit


def multiclass_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float,
                   max_num: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Class-aware NMS of one image's candidates, padded to a fixed ``max_num``.

    boxes (M, 4), scores (M,) (<= 0: not a candidate), labels (M,) int64 ->
    num_dets (1,) int64, boxes (1, max_num, 4), scores (1, max_num), labels (1, max_num)
    (rows past num_dets: zeros, label -1). As mmdet's ``batched_nms``: each class's boxes are
    shifted by ``label * (max coordinate + 1)`` so no two classes overlap, then one NMS; the
    survivors, highest score first, up to ``max_num``."""
    keep = nms_keep(boxes, scores, labels, iou_threshold, max_num)
    scores = scores[keep]
    num = torch.onnx.operators.shape_as_tensor(keep)
    # padded with max_num rows, cut to max_num; the constant reshape fixes the graph's shapes
    out_boxes = torch.cat([boxes[keep], boxes.new_zeros((max_num, 4))])[:max_num]
    out_scores = torch.cat([scores, scores.new_zeros((max_num,))])[:max_num]
    out_labels = torch.cat([labels[keep], labels.new_full((max_num,), -1)])[:max_num]
    return (num, out_boxes.reshape(1, max_num, 4), out_scores.reshape(1, max_num),
            out_labels.reshape(1, max_num))


# --- multi-scale deformable attention (Deformable DETR, DINO) ---------------------------------

def multi_scale_deformable_attn(value: Tensor, spatial_shapes: Tensor,
                                sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """mmcv's ``multi_scale_deformable_attn_pytorch`` with level splits read at run time.

    value (bs, N, heads, dims) holds the flattened levels one after another (N = sum h_l w_l),
    spatial_shapes (L, 2) int64 (h_l, w_l), sampling_locations (bs, Q, heads, L, P, 2) x, y in
    [0, 1], attention_weights (bs, Q, heads, L, P) -> (bs, Q, heads * dims).

    Per level: the level's columns of ``value`` (``Gather`` of ``arange(start, end)``, the bounds
    from ``spatial_shapes``) reshaped to (bs * heads, dims, h_l, w_l) by a run-time shape, then
    bilinear ``grid_sample`` (ONNX ``GridSample``, ``align_corners=False``, zero padding) at
    2 * location - 1; the samples weighted and summed over levels and points. mmcv's version
    splits with Python ints, which tracing would freeze at the traced size."""
    bs, _, num_heads, dims = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    ends = sizes.cumsum(0)
    # (bs, N, heads, dims) -> (bs, heads * dims, N) -> (bs * heads, dims, N), as mmcv's
    columns = value.flatten(2).transpose(1, 2).reshape(bs * num_heads, dims, -1)
    grids = 2 * sampling_locations - 1
    samples = []
    for level in range(num_levels):
        h, w = spatial_shapes[level, 0], spatial_shapes[level, 1]
        index = torch.arange(ends[level] - sizes[level], ends[level])
        shape = torch.stack([torch.tensor(bs * num_heads), torch.tensor(dims), h, w])
        level_map = torch.onnx.operators.reshape_from_tensor_shape(
            columns.index_select(2, index), shape)
        # (bs, Q, heads, P, 2) -> (bs * heads, Q, P, 2)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(level_map, grid, mode='bilinear', padding_mode='zeros',
                                     align_corners=False))  # (bs * heads, dims, Q, P)
    weights = attention_weights.transpose(1, 2).reshape(bs * num_heads, 1, num_queries,
                                                        num_levels * num_points)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(bs, num_heads * dims, num_queries).transpose(1, 2).contiguous()
