"""End-to-end Sparse R-CNN (tools/export_onnx.py --end2end, :mod:`pvt_mm.deploy.end2end_sparse`):
learnt proposals, 2 DIIHead stages with multi-level ONNX RoiAlign, top-k over (proposal, class)
with no NMS, run in ONNX Runtime and OpenVINO at sizes other than the traced one and matched
against mmdet's own ``test_step``. Model: our Sparse R-CNN config narrowed to a PVTv2-b0, 64
channels, 50 proposals, 5 classes, random weights; proposal boxes spread over the image and
FPN levels, class biases apart so that the top-k is not decided by near-ties."""
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
SPARSE = str(ROOT / 'configs' /
             'sparse_rcnn_pvt_v2_b2_fpn_300_proposals_crop_mstrain_480-800_3x_coco.py')
NUM_PROPOSALS, NUM_CLASSES, MAX_PER_IMG = 50, 5, 100
# finest_scale 8: RoIs of < 16, 16-32, 32-64, > 64 px on the 4 levels (100-px images)
CONFIG = """_base_ = ['{base}']
head = dict(type='DIIHead', num_classes={classes}, num_ffn_fcs=2, num_heads=4, num_cls_fcs=1,
            num_reg_fcs=2, feedforward_channels=128, in_channels=64, dropout=0.0,
            dynamic_conv_cfg=dict(type='DynamicConv', in_channels=64, feat_channels=16,
                                  out_channels=64, input_feat_shape=7,
                                  act_cfg=dict(type='ReLU', inplace=True),
                                  norm_cfg=dict(type='LN')),
            loss_bbox=dict(type='L1Loss', loss_weight=5.0),
            loss_iou=dict(type='GIoULoss', loss_weight=2.0),
            loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                          loss_weight=2.0),
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', clip_border=False,
                            target_means=[0.] * 4, target_stds=[0.5, 0.5, 1., 1.]))
model = dict(
    backbone=dict(_delete_=True, type='PVTv2', arch='b0', out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[32, 64, 160, 256], out_channels=64),
    rpn_head=dict(num_proposals={proposals}, proposal_feature_channel=64),
    roi_head=dict(num_stages=2, stage_loss_weights=[1, 1], proposal_feature_channel=64,
                  bbox_roi_extractor=dict(out_channels=64, finest_scale=8),
                  bbox_head=[head, head]),
    train_cfg=None,
    test_cfg=dict(rpn=None, rcnn=dict(max_per_img={max_per_img})))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                          'scale_factor')),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
"""


def write_config(folder: Path) -> str:
    """The narrowed Sparse R-CNN config (module docstring), written into ``folder``."""
    config = folder / 'sparse_rcnn.py'
    config.write_text(CONFIG.format(base=SPARSE, classes=NUM_CLASSES, proposals=NUM_PROPOSALS,
                                    max_per_img=MAX_PER_IMG))
    return str(config)


@pytest.fixture(scope='module')
def sparse(tmp_path_factory):
    """(model, .onnx path, checkpoint, config), exported once at TRACE."""
    tmp = tmp_path_factory.mktemp('sparse')
    return export_random(write_config(tmp), tmp, 'sparse_rcnn', _spread)


def _spread(model: torch.nn.Module) -> None:
    """mmdet's init puts every proposal on the whole image with equal class biases: proposals
    spread over the image and FPN levels, biases apart (no near-ties in the top-k)."""
    gen = torch.Generator().manual_seed(0)
    boxes = model.rpn_head.init_proposal_bboxes.weight
    boxes[:, :2] = torch.rand(NUM_PROPOSALS, 2, generator=gen) * 0.6 + 0.2  # centres
    boxes[:, 2:] = torch.rand(NUM_PROPOSALS, 2, generator=gen) ** 2 * 0.9 + 0.05  # w, h
    for head in model.roi_head.bbox_head:
        head.fc_cls.bias.copy_(torch.linspace(-3., 0., NUM_CLASSES))
        head.fc_cls.weight.mul_(4.)
        head.fc_reg.weight.mul_(0.1)  # refined boxes near the image, not 10x its size


def _sorted(dets: dict) -> dict:
    """Highest score first (mmdet's Sparse R-CNN top-k is unsorted)."""
    order = np.argsort(-dets['scores'], kind='stable')
    return {k: v[order] for k, v in dets.items()}


@pytest.mark.parametrize('runtime', ['onnxruntime', 'openvino'])
def test_sparse_rcnn_parity_at_other_sizes(sparse, runtime):
    """>= 98% of the top-100 detections matched both ways (label, IoU > 0.99, score 1e-3)
    at 100x140 and 77x64, neither the traced size."""
    model, path, _, _ = sparse
    runner = RuntimeModel(path, runtime)
    for i, (h, w) in enumerate(SIZES):
        image = _image(h, w, i)
        ref, out = _sorted(torch_dets(model, image)), runtime_dets(runner, image)
        assert len(ref['scores']) == len(out['scores']) == MAX_PER_IMG
        assert len(set(np.round(ref['scores'], 3))) >= 50  # scores spread, not near-ties
        assert detection_parity(ref, out) >= MIN_MATCHED, (runtime, h, w)


def test_sparse_rcnn_graph_and_metadata(sparse):
    """RoiAlign and TopK in the graph, no NonMaxSuppression; fixed-size outputs; metadata
    says: no NMS, no score threshold."""
    import onnx
    _, path, _, _ = sparse
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {'RoiAlign', 'TopK'} <= ops and 'NonMaxSuppression' not in ops
    dims = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]
            for o in model.graph.output}
    assert dims == {'num_dets': [1], 'boxes': [1, MAX_PER_IMG, 4],
                    'scores': [1, MAX_PER_IMG], 'labels': [1, MAX_PER_IMG]}
    meta = read_metadata(path)
    assert meta['iou_thr'] is None and meta['nms_pre'] is None and meta['score_thr'] is None
    assert meta['max_per_img'] == MAX_PER_IMG and meta['masks'] is False


def test_sparse_rcnn_padding_and_refusals(sparse):
    """K > proposals x classes: the rest padded (label -1); unsupported parts named."""
    from pvt_mm.deploy.end2end import wrap_end2end
    model, _, _, _ = sparse
    model.roi_head.test_cfg.max_per_img = 300
    try:
        num, boxes, scores, labels = wrap_end2end(model, 'det')(
            torch.from_numpy(_image(64, 80).transpose(2, 0, 1).copy())[None].float())
    finally:
        model.roi_head.test_cfg.max_per_img = MAX_PER_IMG
    n = NUM_PROPOSALS * NUM_CLASSES
    assert int(num) == n and labels.shape == (1, 300) and (labels[0, n:] == -1).all()
    assert (scores[0, n:] == 0).all() and (labels[0, :n] >= 0).all()
    head = model.roi_head.bbox_head[1]
    coder = head.bbox_coder
    from mmdet.models.task_modules.coders import LegacyDeltaXYWHBBoxCoder
    head.bbox_coder = LegacyDeltaXYWHBBoxCoder()
    try:
        with pytest.raises(ValueError, match='stage 1: bbox coder LegacyDeltaXYWHBBoxCoder'):
            wrap_end2end(model, 'det')
    finally:
        head.bbox_coder = coder


def test_sparse_rcnn_clip_border_eager(sparse):
    """A coder with clip_border (mmdet's Sparse R-CNN configs have none): the wrapper's
    reference computation clamps each stage's boxes to the image as mmdet does."""
    from pvt_mm.deploy.end2end import wrap_end2end
    model, _, _, _ = sparse
    coders = [head.bbox_coder for head in model.roi_head.bbox_head]
    for coder in coders:
        coder.clip_border = True
    try:
        image = _image(77, 64, 1)
        ref = _sorted(torch_dets(model, image))
        with torch.no_grad():
            num, boxes, scores, labels = wrap_end2end(model, 'det')(
                torch.from_numpy(image.transpose(2, 0, 1).copy())[None].float())
    finally:
        for coder in coders:
            coder.clip_border = False
    assert boxes[..., 0::2].max() <= 64 and boxes[..., 1::2].max() <= 77 and boxes.min() >= 0
    np.testing.assert_allclose(scores[0].numpy(), ref['scores'], atol=1e-5)
    np.testing.assert_allclose(boxes[0].numpy(), ref['bboxes'], atol=1e-3)
    np.testing.assert_array_equal(labels[0].numpy(), ref['labels'])
