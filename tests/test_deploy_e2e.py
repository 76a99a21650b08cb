"""End-to-end deployment (tools/export_onnx.py --end2end, pvt_mm.deploy.predictor,
tools/infer.py / tools/test.py on a .onnx): whole single-stage detectors (ATSS, RetinaNet, FCOS,
GFL), two-stage ones (Faster / Mask R-CNN, Cascade Mask R-CNN) and a Semantic FPN segmentor
(DETR family: test_deploy_detr.py, Sparse R-CNN: test_deploy_sparse.py) exported with
preprocessing and postprocessing inside, run in ONNX Runtime / OpenVINO at sizes other than
the traced one, matched against mmdet's / mmseg's own ``test_step``. Models: PVTv2-b0 demo models with random weights, class biases raised so
that every image has dozens of detections for NMS to sort out."""
from __future__ import annotations

import json
import runpy
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from pvt_mm.deploy.end2end import build_model, export_end2end, read_metadata
from pvt_mm.deploy.matching import detection_parity, matched, pixel_agreement
from pvt_mm.deploy.predictor import DetPredictor, Prepared, load_predictor
from pvt_mm.deploy.runtimes import RuntimeModel

ROOT = Path(__file__).resolve().parents[1]
ATSS = str(ROOT / 'configs/demo/atss_pvtv2-b0_fpn_demo.py')
SEG = str(ROOT / 'configs/demo/fpn_pvtv2-b0_demo-seg.py')
MASK_RCNN = str(ROOT / 'configs/demo/mask-rcnn_pvtv2-b0_fpn_demo.py')
TRACE = (96, 128)
SIZES = [(100, 140), (77, 64)]  # neither the traced size; not multiples of 32; one portrait
MIN_MATCHED = 0.98  # of the top-100 detections, both directions
HEAD = ("_base_ = ['{atss}']\nmodel = dict(type='{det}', bbox_head=dict(_delete_=True, "
        "type='{head}', num_classes=5, in_channels=64, stacked_convs=1, feat_channels=32, "
        "{extra}), test_cfg=dict(nms_pre=200, min_bbox_size=0, score_thr=0.05, "
        "nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))\n")
HEADS = {
    'retinanet': ('RetinaNet', 'RetinaHead', "anchor_generator=dict(type='AnchorGenerator', "
                  "octave_base_scale=4, scales_per_octave=2, ratios=[0.5, 1.0, 2.0], "
                  "strides=[8, 16, 32]), bbox_coder=dict(type='DeltaXYWHBBoxCoder', "
                  "target_means=[.0] * 4, target_stds=[1.0] * 4)"),
    'fcos': ('FCOS', 'FCOSHead', 'strides=[8, 16, 32], norm_on_bbox=True, '
             'centerness_on_reg=True'),
    'gfl': ('GFL', 'GFLHead', "anchor_generator=dict(type='AnchorGenerator', ratios=[1.0], "
            "octave_base_scale=8, scales_per_octave=1, strides=[8, 16, 32]), reg_max=8, "
            "loss_cls=dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0, "
            "loss_weight=1.0)"),
}
FASTER = ("_base_ = ['{mask}']\nmodel = dict(type='FasterRCNN', roi_head=dict("
          "mask_roi_extractor=None, mask_head=None))\n")
STAGE = ("dict(type='Shared2FCBBoxHead', in_channels=64, fc_out_channels=128, num_classes=5, "
         "reg_class_agnostic={agnostic}, bbox_coder=dict(type='DeltaXYWHBBoxCoder', "
         "target_means=[0.] * 4, target_stds={stds}))")
CASCADE = ("_base_ = ['{mask}']\nmodel = dict(type='CascadeRCNN', train_cfg=None, roi_head=dict("
           "_delete_=True, type='CascadeRoIHead', num_stages=3, stage_loss_weights=[1, .5, .25], "
           "bbox_roi_extractor=dict(type='SingleRoIExtractor', roi_layer=dict(type='RoIAlign', "
           "output_size=7, sampling_ratio=0), out_channels=64, featmap_strides=[4, 8, 16, 32]), "
           "bbox_head=[{heads}], mask_roi_extractor=dict(type='SingleRoIExtractor', "
           "roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0), out_channels=64, "
           "featmap_strides=[4, 8, 16, 32]), mask_head=dict(type='FCNMaskHead', num_convs=1, "
           "in_channels=64, conv_out_channels=32, num_classes=5)))\n").format(
    mask='{mask}', heads=', '.join(STAGE.format(agnostic=a, stds=s) for a, s in (
        (True, [.1, .1, .2, .2]), (False, [.05, .05, .1, .1]), (True, [.033, .033, .067, .067]))))
_CACHE: dict = {}


def _config(name: str, tmp: Path) -> str:
    if name == 'atss':
        return ATSS
    if name == 'seg':
        return SEG
    if name == 'mask_rcnn':
        return MASK_RCNN
    if name in ('faster_rcnn', 'cascade'):
        path = tmp / f'{name}.py'
        path.write_text((FASTER if name == 'faster_rcnn' else CASCADE).format(mask=MASK_RCNN))
        return str(path)
    det, head, extra = HEADS[name]
    path = tmp / f'{name}.py'
    path.write_text(HEAD.format(atss=ATSS, det=det, head=head, extra=extra))
    return str(path)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp('e2e')


def export_random(config: str, workdir: Path, stem: str, prepare=None, cli: bool = False,
                  exporter: str = 'torchscript'):
    """(eval model, .onnx path, checkpoint, config): the config's model with seed-0 random
    weights, then ``prepare(model)``, saved as a whole checkpoint and exported end to end at
    TRACE on ``exporter`` (through tools/export_onnx.py with ``cli``)."""
    torch.manual_seed(0)
    model, _ = build_model(config)
    if prepare is not None:
        with torch.no_grad():
            prepare(model)
    ckpt, path = workdir / f'{stem}.pth', workdir / f'{stem}.onnx'
    torch.save({'meta': {'epoch': 1}, 'state_dict': model.state_dict()}, ckpt)
    if cli:
        runpy.run_path(str(ROOT / 'tools/export_onnx.py'))['main'](
            ['--config', config, '--checkpoint', str(ckpt), '--out', str(path),
             '--shape', *map(str, TRACE), '--end2end', '--exporter', exporter])
    else:
        export_end2end(config, path, str(ckpt), shape=TRACE, exporter=exporter)
    return model.eval(), path, ckpt, config


def _raise_biases(model) -> None:
    """Class biases up so that NMS has dozens of boxes to sort."""
    for attr in ('atss_cls', 'retina_cls', 'conv_cls', 'gfl_cls'):  # scores ~0.27
        if hasattr(getattr(model, 'bbox_head', None), attr):
            torch.nn.init.constant_(getattr(model.bbox_head, attr).bias, -1.)
    if hasattr(model, 'roi_head'):  # softmax over 6 classes: ~0.17 each, > score_thr
        heads = model.roi_head.bbox_head
        for head in heads if isinstance(heads, torch.nn.ModuleList) else [heads]:
            torch.nn.init.constant_(head.fc_cls.bias, 0.)


def exported(name: str, workdir: Path):
    """(model, .onnx path, checkpoint, config) of family ``name``, exported once (ATSS through
    the CLI)."""
    if name not in _CACHE:
        _CACHE[name] = export_random(_config(name, workdir), workdir, name, _raise_biases,
                                     cli=name == 'atss')
    return _CACHE[name]


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 BGR: smooth blobs plus noise (not a constant image)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([np.sin(xx / (5 + 3 * c) + c) * np.cos(yy / (7 + c)) for c in range(3)], -1)
    return np.clip(127 + 90 * base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def torch_dets(model, image: np.ndarray, scale_factor=(1., 1.), ori_shape=None) -> dict:
    """mmdet's own prediction (``test_step``: preprocessor, head's predict, rescale)."""
    from mmdet.structures import DetDataSample
    h, w = image.shape[:2]
    meta = dict(img_shape=(h, w), ori_shape=ori_shape or (h, w), scale_factor=scale_factor)
    inputs = torch.from_numpy(image.transpose(2, 0, 1).copy())
    with torch.no_grad():
        pred = model.test_step(dict(inputs=[inputs], data_samples=[DetDataSample(
            metainfo=meta)]))[0].pred_instances
    return dict(bboxes=pred.bboxes.numpy(), scores=pred.scores.numpy(),
                labels=pred.labels.numpy())


def torch_masks(model, image: np.ndarray) -> tuple[dict, np.ndarray]:
    from mmdet.structures import DetDataSample
    h, w = image.shape[:2]
    meta = dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1., 1.))
    inputs = torch.from_numpy(image.transpose(2, 0, 1).copy())
    with torch.no_grad():
        pred = model.test_step(dict(inputs=[inputs], data_samples=[DetDataSample(
            metainfo=meta)]))[0].pred_instances
    return dict(bboxes=pred.bboxes.numpy(), scores=pred.scores.numpy(),
                labels=pred.labels.numpy()), pred.masks.numpy()


def runtime_dets(runner: RuntimeModel, image: np.ndarray) -> dict:
    num, boxes, scores, labels = runner(image.transpose(2, 0, 1)[None].astype(np.float32))
    n = int(num[0])
    return dict(bboxes=boxes[0, :n], scores=scores[0, :n], labels=labels[0, :n])


@pytest.mark.parametrize('name', ['atss', 'retinanet', 'fcos', 'gfl'])
def test_detector_parity_at_other_sizes(name, workdir):
    """>= 98% of the top-100 detections matched both ways (label, IoU > 0.99, score 1e-3);
    ONNX Runtime for all, OpenVINO for ATSS."""
    model, path, _, _ = exported(name, workdir)
    runtimes = ['onnxruntime', 'openvino'] if name == 'atss' else ['onnxruntime']
    for runtime in runtimes:
        runner = RuntimeModel(path, runtime)
        for i, (h, w) in enumerate(SIZES):
            image = _image(h, w, i)
            ref, out = torch_dets(model, image), runtime_dets(runner, image)
            assert len(ref['scores']) >= 20  # NMS had work to do
            assert detection_parity(ref, out) >= MIN_MATCHED, (runtime, h, w)


@pytest.mark.parametrize('name', ['mask_rcnn', 'faster_rcnn', 'cascade'])
def test_two_stage_parity_at_other_sizes(name, workdir):
    """RPN + NMS, multi-level ONNX RoiAlign, bbox head(s) + NMS (+ mask head(s), masks pasted
    outside the graph): detections matched as above, matched masks IoU >= 0.98; Mask R-CNN and
    Cascade Mask R-CNN (3 stages, one of them with class-specific regression) in both
    runtimes."""
    import onnx
    from pvt_mm.deploy.matching import mask_iou
    model, path, _, _ = exported(name, workdir)
    assert 'RoiAlign' in {n.op_type for n in onnx.load(str(path)).graph.node}
    runtimes = ['onnxruntime'] if name == 'faster_rcnn' else ['onnxruntime', 'openvino']
    for runtime in runtimes:
        predictor = load_predictor(path, runtime)
        for i, (h, w) in enumerate(SIZES):
            image = _image(h, w, i)  # fed at its size (the predictor's resize is tested below)
            x = image.transpose(2, 0, 1)[None].astype(np.float32)
            result = predictor.postprocess(predictor.run(x), Prepared(x, (h, w)))
            out = dict(bboxes=result.bboxes, scores=result.scores, labels=result.labels)
            if name == 'faster_rcnn':
                ref = torch_dets(model, image)
            else:
                ref, ref_masks = torch_masks(model, image)
                _, partner = matched(ref, out)
                ious = [mask_iou(ref_masks[k], result.masks[j])
                        for k, j in enumerate(partner) if j >= 0]
                assert sum(m.any() for m in ref_masks) >= 10  # masks with pixels
                assert min(ious) >= 0.98, (runtime, h, w)
            assert len(ref['scores']) >= 20
            assert detection_parity(ref, out) >= MIN_MATCHED, (runtime, h, w)


def test_graph_ops_and_fixed_outputs(workdir):
    import onnx
    _, path, _, _ = exported('atss', workdir)
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {'NonMaxSuppression', 'TopK', 'Pad'} <= ops
    outputs = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]
               for o in graph.output}
    assert outputs == {'num_dets': [1], 'boxes': [1, 50, 4], 'scores': [1, 50],
                       'labels': [1, 50]}
    dims = [d.dim_value or d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 'height', 'width']


def test_metadata_round_trip_and_predictor_rescales(workdir):
    """The .onnx carries what the runtime needs; the predictor applies the config's test
    Resize (keep_ratio 128) as mmcv does and maps boxes back to the original image."""
    import mmcv
    model, path, _, _ = exported('atss', workdir)
    meta = read_metadata(path)
    assert meta['task'] == 'det' and meta['classes'][0] == 'circle'
    assert meta['palette'][0] == [220, 20, 60] and meta['bgr_to_rgb'] is True
    assert np.allclose(meta['mean'], [123.675, 116.28, 103.53])
    assert np.allclose(meta['std'], [58.395, 57.12, 57.375])
    assert meta['size_divisor'] == 32 and meta['score_thr'] == 0.05
    assert meta['test_resize'] == {'scale': [128, 128], 'keep_ratio': True}
    image = _image(100, 150, 3)  # -> 85 x 128 in the pipeline
    resized = mmcv.imrescale(image, (128, 128))
    w_scale, h_scale = resized.shape[1] / 150, resized.shape[0] / 100
    ref = torch_dets(model, resized, (w_scale, h_scale), (100, 150))
    result = DetPredictor(path)(image)
    assert resized.shape[:2] == (85, 128)
    assert result.bboxes[:, 2].max() > 128  # back in the 150 px wide original
    out = dict(bboxes=result.bboxes, scores=result.scores, labels=result.labels)
    assert detection_parity(ref, out) >= MIN_MATCHED


@pytest.mark.parametrize('runtime', ['onnxruntime', 'openvino'])
def test_predictor_in_an_environment_without_torch(runtime, workdir, tmp_path):
    """``pvt_mm_runtime`` in a fresh venv holding numpy, OpenCV and one runtime only (no torch,
    mmengine, mmcv, mmdet, mmseg, onnx, pvt_mm): it imports, reads the metadata, resizes and
    gives the detections of the predictor run here. Prints import time and peak RSS."""
    from deploy_env import ABSENT, PREDICT, clean_env, make_env
    _, path, _, _ = exported('atss', workdir)
    python = make_env(tmp_path / 'env', runtime)
    image = _image(100, 150, 3)  # resized by the predictor (test_resize 128, keep ratio)
    np.save(tmp_path / 'image.npy', image)
    proc = subprocess.run([str(python), '-c', PREDICT, str(path), runtime,
                           str(tmp_path / 'image.npy'), str(tmp_path / 'out.npz'),
                           ','.join(ABSENT)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report['findable'] == [] and report['loaded'] == []
    print(f"pvt_mm_runtime + {runtime} without torch: import {report['import_s']:.2f} s, "
          f"peak RSS {report['peak_rss_mb']:.0f} MB")
    ref = load_predictor(path, runtime)(image)
    out = np.load(tmp_path / 'out.npz')
    assert len(ref.scores) >= 20
    assert np.array_equal(out['labels'], ref.labels)
    assert np.allclose(out['bboxes'], ref.bboxes, atol=1e-4)
    assert np.allclose(out['scores'], ref.scores, atol=1e-6)


def test_plain_runtime_snippet_gives_the_predictors_detections(workdir, tmp_path):
    """The docs' plain-ONNX-Runtime snippet (README.md or docs/deployment.md: metadata, test
    resize, graph, boxes mapped back) on a model with dozens of detections and an image the
    resize shrinks: the predictor's detections (the snippet asserts it; here it must also have
    had detections to compare)."""
    import re

    import cv2
    _, path, _, _ = exported('atss', workdir)
    docs = [ROOT / 'README.md', ROOT / 'docs/deployment.md']
    snippet, source = next((b, doc) for doc in docs if doc.exists()
                           for b in re.findall(r'```python\n(.*?)```', doc.read_text(), re.S)
                           if b.startswith('# the end-to-end graph from plain ONNX Runtime'))
    image = tmp_path / 'image.png'
    cv2.imwrite(str(image), _image(150, 100, 4))  # portrait, -> 128 x 85 in the pipeline
    snippet = snippet.replace('work_dirs/onnx/atss.onnx', str(path)).replace(
        'data/demo/coco/val/val_00000.jpg', str(image))
    scope: dict = {}
    exec(compile(snippet, source.name, 'exec'), scope)
    assert scope['n'] >= 20 and (scope['new_h'], scope['new_w']) == (128, 85)
    assert scope['boxes'][:, 3].max() > 128  # in the original 150 px high image


def test_batch_above_one_is_refused(workdir):
    _, path, _, _ = exported('atss', workdir)
    predictor = load_predictor(path)
    with pytest.raises(ValueError, match='batch 1'):
        predictor.run(np.zeros((2, 3, 64, 64), np.float32))
    with pytest.raises(Exception):  # the graph's batch dimension is fixed at 1
        predictor.model(np.zeros((2, 3, 64, 64), np.float32))


def test_segmentor_parity(workdir):
    """Semantic FPN: >= 99.9% of pixels equal to mmseg's test_step, both runtimes."""
    from mmseg.structures import SegDataSample
    model, path, _, _ = exported('seg', workdir)
    assert read_metadata(path)['classes'][0] == 'background'
    for runtime in ('onnxruntime', 'openvino'):
        predictor = load_predictor(path, runtime)
        for i, (h, w) in enumerate(SIZES):
            image = _image(h, w, i)
            sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
            with torch.no_grad():
                ref = model.test_step(dict(inputs=[torch.from_numpy(image.transpose(2, 0, 1)
                                                                    .copy())],
                                           data_samples=[sample]))[0]
            ref = ref.pred_sem_seg.data[0].numpy()
            assert len(np.unique(ref)) > 1
            assert pixel_agreement(predictor(image), ref) >= 0.999, (runtime, h, w)


REFUSED_CONFIGS = {  # config text -> the one line it is refused with
    "model = dict(type='HybridTaskCascade')": 'HybridTaskCascade: Hybrid Task Cascade',
    "model = dict(test_cfg=dict(rcnn=dict(nms=dict(type='soft_nms'))))":
        "MaskRCNN: not exported end to end: nms type 'soft_nms'",
}


@pytest.mark.parametrize('text', list(REFUSED_CONFIGS))
def test_unsupported_models_are_refused(text, tmp_path):
    config = tmp_path / 'refused.py'
    config.write_text(f"_base_ = ['{MASK_RCNN}']\n{text}\n")
    with pytest.raises(ValueError, match=REFUSED_CONFIGS[text]):
        export_end2end(config, tmp_path / 'm.onnx', shape=TRACE)
    assert not (tmp_path / 'm.onnx').exists()


def test_export_cli_refuses_with_one_line(tmp_path):
    config = tmp_path / 'htc.py'
    config.write_text(f"_base_ = ['{MASK_RCNN}']\nmodel = dict(type='HybridTaskCascade')\n")
    cli = runpy.run_path(str(ROOT / 'tools/export_onnx.py'))
    with pytest.raises(SystemExit) as exit_:
        cli['main'](['--config', str(config), '--out', str(tmp_path / 'm.onnx'), '--end2end'])
    assert str(exit_.value).startswith('export failed: HybridTaskCascade: Hybrid Task Cascade')
    assert '\n' not in str(exit_.value) and not (tmp_path / 'm.onnx').exists()


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory):
    from pvt_mm.demo import DemoDataSpec, make_demo_data
    return make_demo_data(tmp_path_factory.mktemp('demo'), DemoDataSpec(num_train=1,
                                                                        num_val=2))


def test_infer_onnx_writes_the_pytorch_routes_files(workdir, demo_data, tmp_path):
    """tools/infer.py IMAGES MODEL.onnx: the files (vis/, preds/*.json) and predictions of
    tools/infer.py IMAGES CONFIG CHECKPOINT."""
    _, path, ckpt, config = exported('atss', workdir)
    images = str(demo_data / 'coco' / 'val')
    cli = runpy.run_path(str(ROOT / 'tools/infer.py'))
    cli['main']([images, str(path), '--out-dir', str(tmp_path / 'onnx'), '--runtime',
                 'openvino', '--score-thr', '0.2'])
    cli['main']([images, config, str(ckpt), '--out-dir', str(tmp_path / 'torch'),
                 '--score-thr', '0.2'])
    files = {d: sorted(p.relative_to(tmp_path / d).as_posix()
                       for p in (tmp_path / d).rglob('*') if p.is_file())
             for d in ('onnx', 'torch')}
    assert files['onnx'] == files['torch'] and len(files['onnx']) == 4
    for name in files['onnx']:
        if name.endswith('.json'):
            a, b = (json.loads((tmp_path / d / name).read_text()) for d in ('onnx', 'torch'))
            a, b = ({k: np.array(v) for k, v in x.items()} for x in (a, b))
            assert matched(b, a)[0] >= MIN_MATCHED and matched(a, b)[0] >= MIN_MATCHED


def test_test_tool_evaluates_the_onnx(workdir, demo_data, tmp_path, monkeypatch):
    """tools/test.py CONFIG MODEL.onnx: the config's COCO evaluator on the deployed model."""
    from pvt_mm.deploy.evaluate import tool
    _, path, _, config = exported('atss', workdir)
    monkeypatch.setenv('PVT_MM_DEMO_DATA', str(demo_data))
    assert tool([config, str(path), '--work-dir', str(tmp_path)]) == 0
    assert tool([config, str(tmp_path / 'missing.onnx')]) == 1


def test_benchmark_end2end_rows(capsys):
    """tools/benchmark.py --config --end2end --runtimes: whole model and backbone rows for eager,
    ONNX Runtime and OpenVINO, and the share outside the backbone; in bf16 too, where mmcv's
    float-only CPU NMS / RoIAlign kernels got bf16 inputs under autocast and crashed."""
    from mmcv.ops.nms import NMSop
    forward = NMSop.__dict__['forward']
    cli = runpy.run_path(str(ROOT / 'tools/benchmark.py'))
    cli['main'](['--config', MASK_RCNN, '--end2end', '--runtimes', '--shape', '64', '--runs',
                 '1', '--warmup', '0', '--mode', 'fp32', 'bf16'])
    out = capsys.readouterr().out
    for route in ('eager fp32', 'onnxruntime fp32', 'openvino fp32', 'eager bf16',
                  'openvino bf16'):
        assert f'mask-rcnn_pvtv2-b0_fpn_demo @64x64 {route} |' in out
    assert 'outside the backbone' in out and 'load average' in out
    assert NMSop.__dict__['forward'] is forward  # mmcv's own again
