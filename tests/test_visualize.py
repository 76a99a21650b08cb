"""Pictures and a newcomer's first minutes: backbone feature / attention / position-embedding
pictures (v1, v2, li), the attention recomputation against the module's own output, the demo's
ground-truth | prediction pictures and training curve, tools/infer.py through the mm
inferencers, tools without pkg_resources noise, and $PVT_MM_DATA_ROOT in the shipped configs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

from pvt_mm.demo import DemoDataSpec, draw_scene
from pvt_mm.demo.pipeline import run_demo
from pvt_mm.engine.checkpoint_io import latest_checkpoint
from pvt_mm.models.backbones import PVT, PVTv2
from pvt_mm.visualization import backbone_maps, query_attention, visualize_backbone
from pvt_mm.visualization.inference import infer

ROOT = Path(__file__).resolve().parents[1]
H, W = 96, 128  # a small non-square image: every stage grid is non-square too
BACKBONES = {'tiny': lambda: PVT(arch='tiny', drop_path_rate=0.),
             'b0': lambda: PVTv2(arch='b0', drop_path_rate=0.),
             'b2_li': lambda: PVTv2(arch='b2_li', drop_path_rate=0.)}


@pytest.fixture(scope='module')
def image_file(tmp_path_factory) -> Path:
    scene = draw_scene(7)
    img = cv2.resize(scene.image, (W, H), interpolation=cv2.INTER_AREA)  # BGR
    path = tmp_path_factory.mktemp('img') / 'scene.png'
    cv2.imwrite(str(path), img)
    return path


def _png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0, path
    return cv2.imread(str(path), cv2.IMREAD_COLOR)


@pytest.mark.parametrize('arch', list(BACKBONES))
def test_backbone_pictures_per_stage(arch, image_file, tmp_path):
    backbone = BACKBONES[arch]().eval()
    paths = visualize_backbone(image_file, tmp_path, point=(30, 20), backbone=backbone)
    kinds = ('features', 'attention') + (('pos_embed',) if arch == 'tiny' else ())
    assert sorted(p.name for p in paths) == sorted(
        f'stage{i}_{k}.png' for i in range(1, 5) for k in kinds)
    scale = -(-384 // max(H, W))  # small images: enlarged to a 384 px longer side
    for path in paths:
        img = _png(path)
        bar = 58 if 'attention' in path.name else 0  # the colour scale of the weights
        assert img.shape == (22 + H * scale, W * scale + bar, 3), path.name
        assert img[22:].std() > 1, f'{path.name} is flat'
        title = img[:22, :W * scale]
        assert (title < 128).any() and (title == 255).mean() > 0.5, f'{path.name}: no title'
        if bar:  # a JET ramp from red (top, the largest weight) to blue
            ramp = img[22:, W * scale + 2:W * scale + 10].astype(int)
            assert ramp[0, 0, 2] > 150 and ramp[-1, 0, 0] > 100, path.name


@pytest.mark.parametrize('arch', list(BACKBONES))
def test_attention_follows_the_query_point(arch, image_file, tmp_path):
    backbone = BACKBONES[arch]().eval()
    a = visualize_backbone(image_file, tmp_path / 'a', point=(10, 10), backbone=backbone)
    b = visualize_backbone(image_file, tmp_path / 'b', point=(W - 10, H - 10),
                           backbone=backbone)
    for pa, pb in zip(a, b):
        if 'attention' in pa.name:
            diff = np.abs(_png(pa).astype(int) - _png(pb).astype(int)).mean()
            assert diff > 1, f'{pa.name} does not change with the query point'
        else:  # features and position embeddings do not depend on it
            assert np.array_equal(_png(pa), _png(pb)), pa.name


@pytest.mark.parametrize('arch', list(BACKBONES))
def test_recomputed_attention_reproduces_the_module_output(arch):
    """Stage 1 has one head, so the recomputed weights are that head's: weights @ values
    through ``proj`` must equal what the attention module itself returns at that token."""
    backbone = BACKBONES[arch]().eval()
    x = torch.randn(1, 3, H, W)
    maps = backbone_maps(backbone, x, point=(W - 1, 0))
    attn = backbone.stages[0].blocks[-1].attn
    assert attn.num_heads == 1
    captured = {}
    handle = attn.register_forward_hook(
        lambda m, args, out: captured.update(x=args[0], hw=args[1], out=out))
    with torch.no_grad():
        backbone(x)
    handle.remove()
    hw = captured['hw']
    row, col = maps.query_cells[0]
    assert (row, col) == (0, hw[1] - 1)  # top-right pixel -> top-right token
    index = row * hw[1] + col
    weights, grid = query_attention(attn, captured['x'], hw, index)
    assert weights.shape == grid and torch.isclose(weights.sum(), torch.tensor(1.))
    torch.testing.assert_close(weights, maps.attention[0])
    C = captured['x'].shape[-1]
    with torch.no_grad():
        v = attn.kv(attn.reduce(captured['x'], hw))[0, :, C:]
        expected = attn.proj(weights.reshape(1, -1) @ v)
    torch.testing.assert_close(expected, captured['out'][:, index], rtol=1e-4, atol=1e-5)
    if arch == 'b2_li':
        assert grid == (7, 7)  # the pooled keys


def test_query_point_must_lie_on_the_image(image_file, tmp_path):
    backbone = BACKBONES['b0']().eval()
    for point in ((W + 5, 0), (0, -1)):
        with pytest.raises(ValueError, match='outside'):
            visualize_backbone(image_file, tmp_path, point=point, backbone=backbone)


def test_tools_start_without_pkg_resources_warnings(image_file, tmp_path):
    """tools/visualize.py reading a shipped COCO config (whose mmdet:: bases make mmengine
    import pkg_resources) warns about the random weights, but says nothing of
    pkg_resources."""
    out = subprocess.run([sys.executable, str(ROOT / 'tools/visualize.py'), str(image_file),
                          '--config', str(ROOT / 'configs/retinanet_pvt_t_fpn_1x_coco.py'),
                          '--out-dir', str(tmp_path)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, 'PYTHONWARNINGS': 'default'})
    assert out.returncode == 0, out.stderr
    assert 'random weights' in out.stderr  # other warnings still reach the user
    assert 'pkg_resources' not in out.stderr, out.stderr
    assert (tmp_path / 'stage4_pos_embed.png').is_file()


def test_segmentation_pictures_leave_the_background_as_it_is():
    """A background-named class (black in most palettes, dark grey in ours) is not blended
    over the image: those pixels stay as the image shows them; the others are coloured. The
    stock visualizer blends it (the protection is the subclass)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    from mmseg.visualization import SegLocalVisualizer

    from pvt_mm.visualization.palette import make_palette
    from pvt_mm.visualization.visualizers import ReadableSegVisualizer
    image = np.full((32, 32, 3), 200, np.uint8)
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[:, :, 16:] = 1
    sample = SegDataSample(pred_sem_seg=PixelData(data=labels))
    classes = ('background', 'road')
    drawn = {}
    for kind in (ReadableSegVisualizer, SegLocalVisualizer):
        vis = kind(name=f'keep_background_test_{kind.__name__}', alpha=0.8)
        vis.set_dataset_meta(classes, [(0, 0, 0), *make_palette(classes)[1:]])
        vis.add_datasample('x', image, sample, draw_gt=False, with_labels=False)
        drawn[kind] = vis.get_image()
    assert (drawn[ReadableSegVisualizer][:, :16] == 200).all()  # untouched
    assert (drawn[SegLocalVisualizer][:, :16] != 200).all()  # stock: 0.2 * 200 = 40
    assert (drawn[ReadableSegVisualizer][:, 16:] == drawn[SegLocalVisualizer][:, 16:]).all()


def test_label_text_reads_as_a_percentage():
    from pvt_mm.visualization.visualizers import label_text
    assert label_text('person', 0.873) == 'person 87%'
    assert label_text('cat', 0.004) == 'cat 0.4%'
    assert label_text('cat', None) == 'cat'


def test_overlapping_labels_are_moved_apart_most_confident_first():
    from pvt_mm.visualization.visualizers import place_labels
    anchors = np.array([[10., 10.], [12., 11.], [11., 9.], [200., 10.]])
    sizes = [(60., 14.)] * 4
    corners = place_labels(anchors, sizes, (240, 320), order=[2, 0, 1, 3])
    assert tuple(corners[2]) == (11., 9.)  # the most confident keeps its place
    assert tuple(corners[3]) == (200., 10.)  # nothing in its way
    boxes = [(x, y, w, h) for (x, y), (w, h) in zip(corners, sizes)]
    for i in range(4):
        for j in range(i):
            (ax, ay, aw, ah), (bx, by, bw, bh) = boxes[i], boxes[j]
            assert not (ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah)
    edge = place_labels(np.array([[310., 235.]]), [(60., 14.)], (240, 320))
    assert tuple(edge[0]) == (260., 226.)  # kept inside the image


def test_detection_pictures_label_each_box_readably(tmp_path):
    """Three overlapping boxes: the stock visualizer stacks their labels on one spot and writes
    the score as a bare number; ours writes ``cat 90%`` and no two label boxes overlap."""
    from mmdet.structures import DetDataSample
    from mmdet.visualization import DetLocalVisualizer
    from mmengine.structures import InstanceData

    from pvt_mm.visualization.visualizers import ReadableDetVisualizer
    image = np.full((120, 160, 3), 128, np.uint8)
    pred = InstanceData(bboxes=torch.tensor([[10., 10., 90., 90.], [12., 12., 92., 95.],
                                             [14., 11., 88., 80.]]),
                        scores=torch.tensor([0.9, 0.8, 0.7]), labels=torch.tensor([0, 1, 0]))
    sample = DetDataSample(pred_instances=pred)
    vis = ReadableDetVisualizer(name='labels_test_file')
    vis.dataset_meta = dict(classes=('cat', 'dog'), palette=[(255, 0, 0), (0, 255, 0)])
    vis.add_datasample('x', image, sample, draw_gt=False, pred_score_thr=0.3,
                       out_file=str(tmp_path / 'x.png'))
    assert cv2.imread(str(tmp_path / 'x.png')).shape == (120, 160, 3)
    texts = {}
    for kind in (ReadableDetVisualizer, DetLocalVisualizer):
        vis = kind(name=f'labels_test_{kind.__name__}')
        # the drawing step of add_datasample (which then resets the figure to the pixels)
        vis._draw_instances(image, sample.pred_instances, ('cat', 'dog'),
                            [(255, 0, 0), (0, 255, 0)])
        renderer = vis.fig_save_canvas.get_renderer()
        texts[kind] = [(t.get_text(), t.get_window_extent(renderer))
                       for t in vis.ax_save.texts]
    assert [t for t, _ in texts[ReadableDetVisualizer]] == ['cat 90%', 'dog 80%', 'cat 70%']
    assert [t for t, _ in texts[DetLocalVisualizer]] == ['cat: 90.0', 'dog: 80.0', 'cat: 70.0']

    def overlaps(items):
        boxes = [e for _, e in items]
        return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[:i])
    assert overlaps(texts[DetLocalVisualizer])  # what the stock pictures show
    assert not overlaps(texts[ReadableDetVisualizer])


def test_tool_noise_is_filtered_by_what_it_is():
    """pvt_mm._quiet (imported first by every tool) drops torch's meshgrid warning and
    mmengine's registry-scope log lines, also from loggers made later (one per Runner); other
    warnings and log lines still reach the user."""
    script = (
        'import pvt_mm._quiet, logging, warnings, torch\n'
        'from mmengine.logging import MMLogger, print_log\n'
        'torch.meshgrid(torch.arange(2), torch.arange(2))\n'
        'warnings.warn("a warning of yours")\n'
        'MMLogger.get_instance("runner_made_later")\n'
        'print_log(\'Failed to search registry with scope "mmdet" in the "function" registry '
        'tree. As a workaround ...\', logger="current", level=logging.WARNING)\n'
        'print_log(\'The "model" registry in mmdet did not set import location. Fallback\', '
        'logger="current", level=logging.WARNING)\n'
        'print_log("a log line of yours", logger="current", level=logging.WARNING)\n')
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                         timeout=300, env={**os.environ, 'PYTHONWARNINGS': 'default'})
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert 'a warning of yours' in text and 'a log line of yours' in text
    for noise in ('meshgrid', 'Failed to search registry', 'did not set import location'):
        assert noise not in text, text


SHIPPED_CONFIGS = sorted(p.name for p in (ROOT / 'configs').glob('*.py'))


@pytest.mark.parametrize('name', SHIPPED_CONFIGS)
def test_data_root_variable_repoints_the_shipped_configs(name, monkeypatch, tmp_path):
    """Every shipped config reads $PVT_MM_DATA_ROOT (default ``data``) for all three loaders
    and the COCO evaluators, annotation paths staying relative to the data root."""
    path = str(ROOT / 'configs' / name)
    ade = 'ade20k' in name
    monkeypatch.delenv('PVT_MM_DATA_ROOT', raising=False)
    default = Config.fromfile(path)
    sub = 'ade/ADEChallengeData2016' if ade else 'coco/'
    assert default.train_dataloader.dataset.data_root == f'data/{sub}'
    monkeypatch.setenv('PVT_MM_DATA_ROOT', str(tmp_path))
    cfg = Config.fromfile(path)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = cfg[loader].dataset
        assert dataset.data_root == f'{tmp_path}/{sub}', loader
        assert dataset.get('ann_file') == default[loader].dataset.get('ann_file')
    if ade:
        assert cfg.train_dataloader.batch_size == 4
    else:
        assert cfg.val_evaluator.ann_file == f'{tmp_path}/coco/annotations/instances_val2017.json'
        assert cfg.test_evaluator.ann_file == cfg.val_evaluator.ann_file


# ---- the demo's pictures and tools/infer.py ----------------------------------------------
@pytest.fixture(scope='module')
def demo_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp('demo')
    spec = DemoDataSpec(num_train=8, num_val=4)
    opts = ['--data-root', str(work / 'data'), '--work-dir', str(work / 'run'),
            '--num-train', str(spec.num_train), '--num-val', str(spec.num_val),
            '--det-epochs', '1', '--seg-iters', '2', '--min-map50', '0', '--min-miou', '0',
            '--time-budget', '0']
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('PVT_MM_DEMO_DATA', str(work / 'data'))  # restored afterwards
        assert run_demo(opts) == 0
        yield work


def test_demo_writes_prediction_pictures_and_curves(demo_run, capsys):
    for stage in ('det', 'seg'):
        pictures = demo_run / 'run' / stage / 'pictures'
        grid = _png(pictures / 'predictions.png')
        # 4 validation images, ground truth | prediction (2 x 128 px), 4 px gaps
        assert grid.shape == (4 * 128 + 3 * 4, 2 * 128, 3), stage
        singles = sorted(pictures.glob('val_*.png'))
        assert len(singles) == 4 and all(_png(p).shape == (128, 256, 3) for p in singles)
        left, right = _png(singles[0])[:, :128], _png(singles[0])[:, 128:]
        assert np.abs(left.astype(int) - right.astype(int)).mean() > 1  # GT != prediction
        curve = _png(pictures / 'training_curve.png')
        assert curve.shape == (300, 520, 3) and curve.std() > 1


@pytest.mark.parametrize('stage,config', [
    ('det', 'configs/demo/atss_pvtv2-b0_fpn_demo.py'),
    ('seg', 'configs/demo/fpn_pvtv2-b0_demo-seg.py')])
def test_infer_tool_draws_predictions(demo_run, stage, config, tmp_path):
    """Runner checkpoints (with HistoryBuffer logs) load into the mm inferencers."""
    run = demo_run / 'run' / stage
    checkpoint = latest_checkpoint(run)
    folder = 'coco/val' if stage == 'det' else 'ade/images/validation'
    image = sorted((demo_run / 'data' / folder).glob('*.jpg'))[0]
    paths = infer(image, ROOT / config, checkpoint, tmp_path, score_thr=0.0)
    assert [p.name for p in paths] == [image.name]
    drawn, original = _png(paths[0]), _png(image)
    assert drawn.shape == original.shape
    if stage == 'seg':  # class colours, except where 'background' is predicted
        labels = cv2.imread(str(next((tmp_path / 'pred').glob('*_pred.png'))),
                            cv2.IMREAD_UNCHANGED)
        diff = np.abs(drawn.astype(int) - original.astype(int)).mean(-1)
        assert labels.shape == diff.shape
        if (labels == 0).any():  # drawn and original are JPEGs: near, not equal
            assert diff[labels == 0].mean() < 4
        if (labels != 0).any():
            assert diff[labels != 0].mean() > 5
    else:  # the boxes, labels and scores are saved too
        preds = json.loads((tmp_path / 'preds' / f'{image.stem}.json').read_text())
        assert set(preds) >= {'labels', 'scores', 'bboxes'}


def test_demo_length_options_stretch_the_schedules():
    """--det-epochs / --seg-iters move the LR decay's end with the loop (a longer demo run
    decays to the end instead of idling at the minimum learning rate)."""
    from pvt_mm.demo.pipeline import DET_CONFIG, SEG_CONFIG, _set_length
    from pvt_mm.engine.runtime import read_config
    for config, length, key in ((DET_CONFIG, 14, 'max_epochs'), (SEG_CONFIG, 900, 'max_iters')):
        cfg = read_config(config)
        old = cfg.train_cfg[key]
        warmup_end = cfg.param_scheduler[0].end
        _set_length(cfg, length)
        assert cfg.train_cfg[key] == length
        assert cfg.param_scheduler[-1].end == length != old
        assert cfg.param_scheduler[0].end == warmup_end  # the warm-up keeps its length
