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
- :func:`dynamic_size`, :func:`size_dims`, :func:`pad_to_divisor`: sizes read from the tensor
  at run time.
- :func:`multi_scale_deformable_attn` (Deformable DETR, DINO): ONNX ``GridSample`` per level,
  the levels split by :func:`split_levels` / :func:`unflatten_level` with the sizes of
  :func:`level_sizes` (run-time tensors, or under the dynamo exporter the symbolic ints that
  :func:`tag_level_sizes` attached).

Two exporters (:data:`pvt_mm.deploy.export.EXPORTERS`): the TorchScript tracer
(``dynamo=False``) runs the ``autograd.Function`` s and writes their ``symbolic``; the dynamo
exporter (``torch.export`` + onnxscript, ``dynamo=True``) ignores ``symbolic``, so while it runs
(:func:`dynamo_exporting`) NMS and RoIAlign go through the custom ops ``pvt_mm::nms`` /
``pvt_mm::roi_align`` (same eager code, a fake kernel for the symbolic shapes) translated by
:func:`onnx_translations`, and sizes are symbolic ints rather than tensors.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def dynamo_exporting() -> bool:
    """True while ``torch.export`` (the dynamo ONNX exporter) traces the forward."""
    return torch.compiler.is_exporting() or torch.compiler.is_compiling()


def dynamic_size(x: Tensor) -> tuple[Tensor, Tensor]:
    """(H, W) of an NCHW tensor as 0-d int64 tensors: ONNX ``Shape`` + ``Gather`` in the graph,
    never the traced size baked in as a constant."""
    if dynamo_exporting():
        return (torch.scalar_tensor(x.shape[2], dtype=torch.long),
                torch.scalar_tensor(x.shape[3], dtype=torch.long))
    shape = torch.onnx.operators.shape_as_tensor(x)
    return shape[2], shape[3]


def size_dims(x: Tensor) -> tuple:
    """(H, W) of an NCHW tensor for size arguments (``arange``, ``pad``, ``interpolate``):
    symbolic ints under the dynamo exporter (a tensor there would become a data-dependent
    value), 0-d tensors under the TorchScript tracer (an int would be baked in)."""
    if dynamo_exporting():
        return x.shape[2], x.shape[3]
    return dynamic_size(x)


def dynamic_len(x: Tensor) -> Tensor:
    """``x.shape[0]`` as a 0-d int64 tensor read at run time."""
    if dynamo_exporting():
        return torch.scalar_tensor(x.shape[0], dtype=torch.long)
    return torch.onnx.operators.shape_as_tensor(x)[0]


def pad_to_divisor(x: Tensor, divisor: int, value: float = 0.) -> Tensor:
    """Pad (N, C, H, W) at the bottom / right to multiples of ``divisor`` (mmengine's
    ``stack_batch`` / mmdet's preprocessor): ONNX ``Pad`` with pads computed from the shape."""
    if divisor <= 1:
        return x
    h, w = size_dims(x)
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


@torch.library.custom_op('pvt_mm::nms', mutates_args=())
def nms_op(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
           score_threshold: float) -> Tensor:
    """:class:`NonMaxSuppression` as a custom op (the dynamo exporter's route): (K, 3) rows."""
    return NonMaxSuppression.forward(None, boxes, scores, max_per_class, iou_threshold,
                                     score_threshold)


@nms_op.register_fake
def _nms_fake(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
              score_threshold: float) -> Tensor:
    # at most max_per_class rows per (batch, class): a bounded size keeps the exporter's range
    # checks on it within int64
    bound = scores.shape[0] * scores.shape[1] * max_per_class
    bound = bound if isinstance(bound, int) else None
    size = torch.library.get_ctx().new_dynamic_size(max=bound)
    return boxes.new_empty((size, 3), dtype=torch.long)


@torch.library.custom_op('pvt_mm::roi_align', mutates_args=())
def roi_align_op(feat: Tensor, rois: Tensor, batch_indices: Tensor, out_h: int, out_w: int,
                 spatial_scale: float, sampling_ratio: int) -> Tensor:
    """:class:`RoIAlign` as a custom op (the dynamo exporter's route)."""
    return RoIAlign.forward(None, feat, rois, batch_indices, out_h, out_w, spatial_scale,
                            sampling_ratio)


@roi_align_op.register_fake
def _roi_align_fake(feat: Tensor, rois: Tensor, batch_indices: Tensor, out_h: int, out_w: int,
                    spatial_scale: float, sampling_ratio: int) -> Tensor:
    return feat.new_empty((rois.shape[0], feat.shape[1], out_h, out_w))


def non_max_suppression(boxes: Tensor, scores: Tensor, max_per_class: int,
                        iou_threshold: float, score_threshold: float) -> Tensor:
    """ONNX ``NonMaxSuppression`` rows (K, 3), on the route of the exporter running."""
    if dynamo_exporting():
        return nms_op(boxes, scores, max_per_class, iou_threshold, score_threshold)
    return NonMaxSuppression.apply(boxes, scores, max_per_class, iou_threshold, score_threshold)


def roi_align(feat: Tensor, rois: Tensor, batch_indices: Tensor, out_h: int, out_w: int,
              spatial_scale: float, sampling_ratio: int) -> Tensor:
    """ONNX ``RoiAlign`` (see :class:`RoIAlign`), on the route of the exporter running."""
    if dynamo_exporting():
        return roi_align_op(feat, rois, batch_indices, out_h, out_w, spatial_scale,
                            sampling_ratio)
    return RoIAlign.apply(feat, rois, batch_indices, out_h, out_w, spatial_scale,
                          sampling_ratio)


def nms_keep(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float,
             max_num: int) -> Tensor:
    """Indices (k,) int64 of the candidates class-aware NMS keeps, highest score first, at most
    ``max_num`` (scores <= 0: not candidates); see :func:`multiclass_nms`."""
    offsets = labels.to(boxes.dtype)[:, None] * (boxes.max() + 1)
    keep = non_max_suppression((boxes + offsets)[None], scores[None, None], max_num,
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
    num = dynamic_len(keep).reshape(1)
    # padded with max_num rows, cut to max_num; the constant reshape fixes the graph's shapes
    out_boxes = torch.cat([boxes[keep], boxes.new_zeros((max_num, 4))])[:max_num]
    out_scores = torch.cat([scores, scores.new_zeros((max_num,))])[:max_num]
    out_labels = torch.cat([labels[keep], labels.new_full((max_num,), -1)])[:max_num]
    return (num, out_boxes.reshape(1, max_num, 4), out_scores.reshape(1, max_num),
            out_labels.reshape(1, max_num))


# --- multi-scale deformable attention (Deformable DETR, DINO) ---------------------------------

def tag_level_sizes(spatial_shapes: Tensor, sizes: list[tuple]) -> Tensor:
    """Attach the levels' (h, w) as symbolic ints to ``spatial_shapes`` (the dynamo exporter:
    there the tensor's values are data, and reading them back would give new unbacked sizes
    that no guard can relate to the input's). Returns ``spatial_shapes``."""
    spatial_shapes.level_sizes = [tuple(s) for s in sizes]
    return spatial_shapes


def level_sizes(spatial_shapes: Tensor) -> list[tuple]:
    """(h, w) per level: the symbolic ints of :func:`tag_level_sizes`, else 0-d int64 tensors
    read from ``spatial_shapes`` (L, 2) at run time (``Gather`` in a TorchScript graph)."""
    sizes = getattr(spatial_shapes, 'level_sizes', None)
    if sizes is not None:
        return sizes
    return [(spatial_shapes[lvl, 0], spatial_shapes[lvl, 1])
            for lvl in range(spatial_shapes.shape[0])]


def split_levels(x: Tensor, dim: int, spatial_shapes: Tensor) -> list[Tensor]:
    """The flattened levels of ``x`` along ``dim`` (h_l * w_l entries each, one after
    another), one tensor per level. Run-time sizes: ``Gather`` of ``arange(start, end)`` with
    bounds from ``spatial_shapes``; symbolic ints: ``split``."""
    sizes = level_sizes(spatial_shapes)
    if not isinstance(sizes[0][0], Tensor):
        return list(x.split([h * w for h, w in sizes], dim))
    counts = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    ends = counts.cumsum(0)
    return [x.index_select(dim, torch.arange(ends[lvl] - counts[lvl], ends[lvl]))
            for lvl in range(len(sizes))]


def unflatten_level(x: Tensor, lead: Sequence[int], h, w) -> Tensor:
    """(*lead, h * w) -> (*lead, h, w); h, w symbolic ints or 0-d int64 tensors (a run-time
    shape for ONNX ``Reshape``)."""
    if not isinstance(h, Tensor):
        return x.reshape(*lead, h, w)
    shape = torch.stack([*(torch.tensor(n) for n in lead), h, w])
    return torch.onnx.operators.reshape_from_tensor_shape(x, shape)


def multi_scale_deformable_attn(value: Tensor, spatial_shapes: Tensor,
                                sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """mmcv's ``multi_scale_deformable_attn_pytorch`` with level splits read at run time.

    value (bs, N, heads, dims) holds the flattened levels one after another (N = sum h_l w_l),
    spatial_shapes (L, 2) int64 (h_l, w_l), sampling_locations (bs, Q, heads, L, P, 2) x, y in
    [0, 1], attention_weights (bs, Q, heads, L, P) -> (bs, Q, heads * dims).

    Per level: the level's columns of ``value`` (:func:`split_levels`) reshaped to
    (bs * heads, dims, h_l, w_l) (:func:`unflatten_level`), then bilinear ``grid_sample`` (ONNX
    ``GridSample``, ``align_corners=False``, zero padding) at 2 * location - 1; the samples
    weighted and summed over levels and points. mmcv's version splits with Python ints, which
    tracing would freeze at the traced size."""
    bs, _, num_heads, dims = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    # (bs, N, heads, dims) -> (bs, heads * dims, N) -> (bs * heads, dims, N), as mmcv's
    columns = value.flatten(2).transpose(1, 2).reshape(bs * num_heads, dims, -1)
    grids = 2 * sampling_locations - 1
    samples = []
    levels = split_levels(columns, 2, spatial_shapes)
    for level, (part, (h, w)) in enumerate(zip(levels, level_sizes(spatial_shapes))):
        level_map = unflatten_level(part, (bs * num_heads, dims), h, w)
        # (bs, Q, heads, P, 2) -> (bs * heads, Q, P, 2)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(level_map, grid, mode='bilinear', padding_mode='zeros',
                                     align_corners=False))  # (bs * heads, dims, Q, P)
    weights = attention_weights.transpose(1, 2).reshape(bs * num_heads, 1, num_queries,
                                                        num_levels * num_points)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(bs, num_heads * dims, num_queries).transpose(1, 2).contiguous()


# --- ONNX translations of the custom ops (dynamo exporter) ------------------------------------

def onnx_translations() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``: ``pvt_mm::nms`` ->
    ONNX ``NonMaxSuppression``, ``pvt_mm::roi_align`` -> ONNX ``RoiAlign`` (the nodes the
    TorchScript route's ``symbolic`` s write). Needs onnxscript."""
    from onnxscript import opset18 as op

    def nms(boxes, scores, max_per_class: int, iou_threshold: float,
            score_threshold: float):
        return op.NonMaxSuppression(boxes, scores, op.Constant(value_ints=[max_per_class]),
                                    op.Constant(value_floats=[iou_threshold]),
                                    op.Constant(value_floats=[score_threshold]))

    def roi_align(feat, rois, batch_indices, out_h: int, out_w: int, spatial_scale: float,
                  sampling_ratio: int):
        return op.RoiAlign(feat, rois, batch_indices, mode='avg',
                           coordinate_transformation_mode='half_pixel', output_height=out_h,
                           output_width=out_w, spatial_scale=spatial_scale,
                           sampling_ratio=sampling_ratio)

    return {torch.ops.pvt_mm.nms.default: nms, torch.ops.pvt_mm.roi_align.default: roi_align}
