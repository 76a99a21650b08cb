"""End-to-end export of the DETR family (pvt_mm.deploy.end2end_detr): DETR, two-stage Deformable
DETR with box refinement and DINO, derived from our configs (PVTv2-b0, narrow transformers, few
queries, 5 classes, random weights with spread-out class biases), exported at one size and run in
ONNX Runtime (and OpenVINO for the deformable ones) at two others, matched against mmdet's own
``test_step``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pvt_mm.deploy.end2end import read_metadata
from pvt_mm.deploy.matching import detection_parity
from pvt_mm.deploy.runtimes import RuntimeModel
from test_deploy_e2e import (MIN_MATCHED, SIZES, _image, export_random, runtime_dets,
                             torch_dets)

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = ("backbone=dict(_delete_=True, type='PVTv2', arch='b0', out_indices={out}, "
            "drop_path_rate=0.0)")
PIPELINE = ("test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', "
            "scale=(128, 128), keep_ratio=True), dict(type='LoadAnnotations', with_bbox=True), "
            "dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', "
            "'img_shape', 'scale_factor'))]\n"
            "test_dataloader = dict(dataset=dict(pipeline=test_pipeline))\n")
# deformable layers: embed 256 (mmdet's proposal / query sine embeddings are 128 per coordinate)
DEFORM = ("encoder=dict(num_layers=1, layer_cfg=dict(self_attn_cfg=dict(num_points=2), "
          "ffn_cfg=dict(feedforward_channels=128))), decoder=dict(num_layers=2, layer_cfg=dict("
          "cross_attn_cfg=dict(num_points=2), ffn_cfg=dict(feedforward_channels=128))), "
          "bbox_head=dict(num_classes=5), test_cfg=dict(max_per_img=100)")
CONFIGS = {
    # DETR on the last map; padding to 32 (as our config): exercises the padding mask
    'detr': ('detr_pvt_s_8x2_50ep_coco.py',
             "model = dict(num_queries=40, {backbone}, neck=dict(in_channels=[256], "
             "out_channels=64), encoder=dict(num_layers=1, layer_cfg=dict(self_attn_cfg=dict("
             "embed_dims=64, num_heads=4), ffn_cfg=dict(embed_dims=64, feedforward_channels=128)"
             ")), decoder=dict(num_layers=2, layer_cfg=dict(self_attn_cfg=dict(embed_dims=64, "
             "num_heads=4), cross_attn_cfg=dict(embed_dims=64, num_heads=4), ffn_cfg=dict("
             "embed_dims=64, feedforward_channels=128))), positional_encoding=dict("
             "num_feats=32), bbox_head=dict(num_classes=5, embed_dims=64), "
             "test_cfg=dict(max_per_img=40))\n", '(3,)'),
    # refine + two-stage as our config, padded to 32 here (masks, valid ratios < 1)
    'deformable': ('deformable_detr_refine_twostage_pvt_v2_b2_16xb2_50e_coco.py',
                   "model = dict(num_queries=40, data_preprocessor=dict(pad_size_divisor=32), "
                   "{backbone}, neck=dict(in_channels=[64, 160, 256], out_channels=256), "
                   + DEFORM + ")\n", '(1, 2, 3)'),
    # DINO as our config (no padding: pad_size_divisor 1)
    'dino': ('dino_4scale_pvt_v2_b2_8xb2_12e_coco.py',
             "model = dict(num_queries=40, {backbone}, neck=dict(in_channels=[64, 160, 256], "
             "out_channels=256), " + DEFORM + ")\n", '(1, 2, 3)'),
}
_CACHE: dict = {}


def _config(name: str, tmp: Path) -> str:
    base, model, out = CONFIGS[name]
    path = tmp / f'{name}.py'
    path.write_text(f"_base_ = ['{ROOT / 'configs' / base}']\n"
                    + model.format(backbone=BACKBONE.format(out=out)) + PIPELINE)
    return str(path)


def _spread_scores(model: torch.nn.Module) -> None:
    """Random class biases (and larger weights) so that the scores are distinct and far from
    uniform: the top-k is not decided by ties (under no_grad, in export_random)."""
    g = torch.Generator().manual_seed(1)
    for m in model.bbox_head.modules():
        if isinstance(m, torch.nn.Linear) and m.out_features in (5, 6):
            m.bias.copy_(torch.randn(m.out_features, generator=g) * 2)
            m.weight.mul_(4)
    if getattr(model, 'as_two_stage', False):
        # padded positions enter the proposal scores as LayerNorm(memory_trans_fc(0)), all
        # alike: with a zero bias that is 0, so they rank below half of the image's positions
        # instead of filling the queries with copies of one invalid proposal
        model.memory_trans_fc.bias.zero_()


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp('e2e_detr')


def exported(name: str, workdir: Path):
    """(model, .onnx path, checkpoint, config) of family ``name``, exported once at TRACE."""
    if name not in _CACHE:
        _CACHE[name] = export_random(_config(name, workdir), workdir, name, _spread_scores)
    return _CACHE[name]


@pytest.mark.parametrize('name', ['detr', 'deformable', 'dino'])
def test_detr_family_parity_at_other_sizes(name, workdir):
    """>= 98% of the top-100 detections matched both ways (label, IoU > 0.99, score 1e-3) at
    two sizes other than the traced one (one padded to 32 with a padding mask for DETR and
    Deformable DETR, one portrait); ONNX Runtime for all, OpenVINO for the deformable ones."""
    model, path, _, _ = exported(name, workdir)
    runtimes = ['onnxruntime'] + (['openvino'] if name != 'detr' else [])
    for runtime in runtimes:
        runner = RuntimeModel(path, runtime)
        for i, (h, w) in enumerate(SIZES):
            image = _image(h, w, i)
            ref, out = torch_dets(model, image), runtime_dets(runner, image)
            assert len(ref['scores']) == (40 if name == 'detr' else 100)
            assert len(np.unique(ref['scores'])) == len(ref['scores'])  # no ties in the top-k
            assert ref['scores'][0] - ref['scores'][-1] > 0.05
            assert detection_parity(ref, out) >= MIN_MATCHED, (runtime, h, w)


def test_graph_ops_outputs_and_metadata(workdir):
    """GridSample for the deformable attention, fixed-size outputs, dynamic input height and
    width; no NMS in the metadata."""
    import onnx
    for name, k in (('detr', 40), ('deformable', 100), ('dino', 100)):
        _, path, _, _ = exported(name, workdir)
        graph = onnx.load(str(path)).graph
        ops = {n.op_type for n in graph.node}
        assert ('GridSample' in ops) == (name != 'detr'), name
        assert 'NonMaxSuppression' not in ops
        outputs = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]
                   for o in graph.output}
        assert outputs == {'num_dets': [1], 'boxes': [1, k, 4], 'scores': [1, k],
                           'labels': [1, k]}
        dims = [d.dim_value or d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
        assert dims == [1, 3, 'height', 'width']
        meta = read_metadata(path)
        assert meta['iou_thr'] is None and meta['nms_pre'] is None and meta['score_thr'] is None
        assert meta['max_per_img'] == k and meta['masks'] is False
        assert meta['test_resize'] == {'scale': [128, 128], 'keep_ratio': True}


def test_deformable_attention_op_matches_mmcv():
    """ops.multi_scale_deformable_attn == mmcv's multi_scale_deformable_attn_pytorch."""
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch
    from pvt_mm.deploy.ops import multi_scale_deformable_attn
    shapes = torch.tensor([[7, 5], [4, 3], [2, 2]])
    n = int(shapes.prod(1).sum())
    value = torch.randn(1, n, 2, 8)
    loc = torch.rand(1, 6, 2, 3, 4, 2) * 1.2 - 0.1  # some outside the map: zero padding
    weights = torch.rand(1, 6, 2, 3, 4).softmax(-1)
    ref = multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)
    assert torch.allclose(multi_scale_deformable_attn(value, shapes, loc, weights), ref,
                          atol=1e-6)


def test_unsupported_variants_are_refused(workdir):
    """One-line ValueErrors for a detector or head the graph does not reproduce and for a
    max_per_img above the candidates."""
    from mmdet.models.detectors import DETR
    from pvt_mm.deploy.end2end import wrap_end2end
    model, _, _, _ = exported('detr', workdir)
    original = model.__class__

    class ConditionalLike(DETR):
        pass

    try:
        model.__class__ = ConditionalLike
        with pytest.raises(ValueError, match='ConditionalLike with DETRHead: end-to-end'):
            wrap_end2end(model, 'det')
    finally:
        model.__class__ = original
    model.bbox_head.test_cfg['max_per_img'] = 41
    try:
        with pytest.raises(ValueError, match='max_per_img 41 > the 40 candidates'):
            wrap_end2end(model, 'det')
    finally:
        model.bbox_head.test_cfg['max_per_img'] = 40


def test_traceable_patches_compute_what_mmcv_and_mmdet_compute(workdir):
    """The exporter's patches (:func:`pvt_mm.deploy.common.traceable`: deformable attention,
    encoder reference points, two-stage proposals with run-time sizes) give the eager forward's
    detections at a padded size, and mmcv's / mmdet's functions are back afterwards."""
    import mmcv.ops.multi_scale_deform_attn as msda
    from mmcv.ops import MultiScaleDeformableAttention
    from mmdet.models.detectors import DeformableDETR
    from mmdet.models.layers import DeformableDetrTransformerEncoder
    from pvt_mm.deploy.common import traceable
    from pvt_mm.deploy.end2end import wrap_end2end
    deformable, _, _, _ = exported('deformable', workdir)
    wrapped = wrap_end2end(deformable, 'det')

    def originals():
        return (msda.multi_scale_deformable_attn_pytorch,
                MultiScaleDeformableAttention.__dict__['forward'],
                DeformableDetrTransformerEncoder.__dict__['get_encoder_reference_points'],
                DeformableDETR.__dict__['gen_encoder_output_proposals'])

    before = originals()
    x = torch.from_numpy(_image(77, 64, 1).transpose(2, 0, 1).copy())[None].float()
    with torch.no_grad():
        ref = wrapped(x)
        with traceable(wrapped):
            assert originals()[1] is not before[1]
            out = wrapped(x)
    assert originals() == before
    for a, b in zip(ref, out):
        assert torch.allclose(a.float(), b.float(), atol=1e-4), (a, b)
