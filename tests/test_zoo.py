"""The model zoo beyond RetinaNet / Mask R-CNN 1x / Semantic FPN (tests/test_configs.py): the
official whai362/PVT DETR, RetinaNet-640 and PVTv2 3x detectors, Deformable DETR and DINO with
PVTv2 on mmdet 3.x. Every config builds with its parameter count pinned (published ones matched),
follows its recipe, and the detectors train two iterations and evaluate on the demo data;
configs/metafile.yml lists every config."""
from __future__ import annotations

import functools
import math
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from mmengine.config import Config, ConfigDict
from mmengine.hooks import Hook

from mm_helpers import cached_config_index  # noqa: F401  (fixture)
from mm_helpers import build_on_meta, count_parameters
from pvt_mm.analysis.zoo import config_entry
from pvt_mm.demo import CLASSES, DemoDataSpec, make_demo_data
from pvt_mm.demo.pipeline import DATA_ENV
from pvt_mm.engine.cpu import CPUAmpOptimWrapper
from pvt_mm.engine.runtime import build_runner, load_config
from pvt_mm.models.backbones import ARCHS

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / 'configs'
RELEASE_URL = 'https://github.com/whai362/PVT/releases/download/v2/'
DETR = 'detr_pvt_s_8x2_50ep_coco.py'
RETINANET_640 = 'retinanet_pvt_s_fpn_1x_coco_640.py'
DEFORMABLE_DETR = 'deformable_detr_refine_twostage_pvt_v2_b2_16xb2_50e_coco.py'
DINO = 'dino_4scale_pvt_v2_b2_8xb2_12e_coco.py'
SPARSE = 'sparse_rcnn_pvt_v2_{}_fpn_300_proposals_crop_mstrain_480-800_3x_coco.py'
THREE_X = {'mask_rcnn': 'mask_rcnn_pvt_v2_{}_fpn_3x_mstrain.py',
           'cascade_mask_rcnn': 'cascade_mask_rcnn_pvt_v2_{}_fpn_3x_mstrain_fp16.py',
           'atss': 'atss_pvt_v2_{}_fpn_3x_mstrain_fp16.py',
           'gfl': 'gfl_pvt_v2_{}_fpn_3x_mstrain_fp16.py'}

# Parameters of every new config, counted from the model built on the meta device (80 classes).
PARAMETERS = {
    DETR: 41_644_629,
    RETINANET_640: 34_220_788,
    DEFORMABLE_DETR: 38_344_972,
    DINO: 44_833_548,
    'mask_rcnn_pvt_v2_b2_fpn_3x_mstrain.py': 45_017_264,
    'mask_rcnn_pvt_v2_b2_li_fpn_3x_mstrain.py': 42_207_920,
    'cascade_mask_rcnn_pvt_v2_b2_fpn_3x_mstrain_fp16.py': 82_852_466,
    'cascade_mask_rcnn_pvt_v2_b2_li_fpn_3x_mstrain_fp16.py': 80_043_122,
    'atss_pvt_v2_b2_fpn_3x_mstrain_fp16.py': 32_965_402,
    'atss_pvt_v2_b2_li_fpn_3x_mstrain_fp16.py': 30_156_058,
    'gfl_pvt_v2_b2_fpn_3x_mstrain_fp16.py': 33_110_617,
    'gfl_pvt_v2_b2_li_fpn_3x_mstrain_fp16.py': 30_301_273,
    SPARSE.format('b2'): 106_963_816,
    SPARSE.format('b2_li'): 104_154_472,
}
# Published parameter counts (M) with their source; matched to 0.1M.
PUBLISHED = {
    # whai362/PVT detection/README.md, "Calculating FLOPS & Params": get_flops.py on this config
    # prints "Params: 33.11 M"
    'gfl_pvt_v2_b2_fpn_3x_mstrain_fp16.py': 33.11,
    # PVTv2 paper, Mask R-CNN table (the 3x model is the 1x one: 45.0M / 42.2M)
    'mask_rcnn_pvt_v2_b2_fpn_3x_mstrain.py': 45.0,
    'mask_rcnn_pvt_v2_b2_li_fpn_3x_mstrain.py': 42.2,
    # PVT paper, RetinaNet table (the 640 model is the 800 one: 34.2M)
    RETINANET_640: 34.2,
}
TOLERANCE_M = 0.1

# The recipes: (AdamW lr, weight decay, backbone lr_mult, clip max_norm, epochs, lr steps,
# warm-up iterations, images per GPU, auto_scale_lr base batch, mixed precision)
_3X = (1e-4, 0.05, None, None, 36, [27, 33], 500, 2, 16, True)
RECIPES = {
    DETR: (1e-4, 1e-4, 0.1, 0.1, 50, [33], None, 2, 16, False),
    RETINANET_640: (1e-4, 1e-4, None, None, 12, [8, 11], 500, 2, 16, False),
    DEFORMABLE_DETR: (2e-4, 1e-4, 0.1, 0.1, 50, [40], None, 2, 32, False),
    DINO: (1e-4, 1e-4, 0.1, 0.1, 12, [11], None, 2, 16, False),
    **{THREE_X[d].format(bb): _3X for d in THREE_X for bb in ('b2', 'b2_li')},
    'mask_rcnn_pvt_v2_b2_fpn_3x_mstrain.py': _3X[:-1] + (False,),  # the official b2: no fp16
    SPARSE.format('b2'): (2.5e-5 / 1.4, 1e-4, None, 1, 36, [27, 33], 500, 1, 8, False),
    SPARSE.format('b2_li'): (2.5e-5, 1e-4, None, 1, 36, [27, 33], 500, 2, 16, False),
}
NEW_CONFIGS = sorted(PARAMETERS)
OUR_CLASS = {'pvt_small_f4': 'PVT'}  # official class names -> the class they build

pytestmark = pytest.mark.usefixtures('cached_config_index')


def load(name: str) -> Config:
    return Config.fromfile(str(CONFIG_DIR / name))


@functools.lru_cache(maxsize=None)
def counted(name: str) -> int:
    return count_parameters(build_on_meta(load(name)))


def neck_inputs(neck: torch.nn.Module) -> list[int]:
    """Input channels of an FPN or a ChannelMapper (which does not keep its argument)."""
    if hasattr(neck, 'in_channels'):
        return list(neck.in_channels)
    return [c.conv.in_channels for c in neck.convs]


# ---- build, parameters, recipes ---------------------------------------------------------------
def test_parameter_table_covers_the_new_configs():
    assert set(PARAMETERS) == set(RECIPES)
    assert all((CONFIG_DIR / n).is_file() for n in NEW_CONFIGS)


@pytest.mark.parametrize('name', NEW_CONFIGS)
def test_config_builds_with_pinned_parameter_count(name):
    cfg = load(name)
    assert cfg.default_scope == 'mmdet'
    assert cfg.custom_imports == dict(imports=['pvt_mm'], allow_failed_imports=False)
    model = build_on_meta(cfg)
    backbone = model.backbone
    assert type(backbone).__name__ == OUR_CLASS.get(cfg.model.backbone.type,
                                                   cfg.model.backbone.type)
    assert neck_inputs(model.neck) == list(backbone.out_channels)
    assert count_parameters(model) == counted(name) == PARAMETERS[name]
    if name in PUBLISHED:
        count = counted(name) / 1e6
        assert abs(count - PUBLISHED[name]) <= TOLERANCE_M, f'{count:.3f}M vs {PUBLISHED[name]}'


@pytest.mark.parametrize('name', NEW_CONFIGS)
def test_zoo_config_keeps_its_published_recipe(name):
    cfg = load(name)
    lr, wd, bb_mult, clip, epochs, steps, warmup, batch, base, amp = RECIPES[name]
    wrapper = cfg.optim_wrapper
    assert (wrapper.optimizer.type, wrapper.optimizer.weight_decay) == ('AdamW', wd)
    assert math.isclose(wrapper.optimizer.lr, lr)
    keys = wrapper.get('paramwise_cfg', {}).get('custom_keys', {})
    assert keys.get('backbone', {}).get('lr_mult') == bb_mult
    assert (wrapper.get('clip_grad') or {}).get('max_norm') == clip
    assert wrapper.type == ('AmpOptimWrapper' if amp else 'OptimWrapper')
    if amp:
        assert wrapper.loss_scale == 'dynamic'
    assert cfg.train_cfg.max_epochs == epochs
    schedulers = {s.type: s for s in cfg.param_scheduler}
    assert schedulers['MultiStepLR'].milestones == steps
    assert (schedulers['LinearLR'].end if 'LinearLR' in schedulers else None) == warmup
    assert cfg.train_dataloader.batch_size == batch
    assert cfg.auto_scale_lr.base_batch_size == base
    backbone = cfg.model.backbone
    official = 'pvt_small' if name in (DETR, RETINANET_640) else f'pvt_v2_{backbone.arch}'
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=f'{RELEASE_URL}{official}.pth')
    assert backbone.drop_path_rate == 0.1
    if name == RETINANET_640:
        assert (backbone.type, backbone.arch) == ('PVT', 'small')


def _resize_scales(cfg: Config) -> set[tuple[int, int]]:
    """Every (long, short) scale a train pipeline can resize to."""
    found = set()

    def walk(obj):
        if isinstance(obj, dict):
            if obj.get('type') in ('Resize', 'RandomChoiceResize'):
                for s in obj.get('scales', [obj.get('scale')]):
                    found.add((max(s), min(s)))
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
    walk(cfg.train_dataloader.dataset.pipeline)
    return found


def test_multi_scale_pipelines():
    three_x = {(1333, s) for s in range(480, 801, 32)} | {(1333, s) for s in (400, 500, 600)}
    for name in [THREE_X[d].format(bb) for d in THREE_X for bb in ('b2', 'b2_li')] + \
            [SPARSE.format('b2')]:
        cfg = load(name)
        assert _resize_scales(cfg) == three_x, name
        crops = [t for t in cfg.train_dataloader.dataset.pipeline[3].transforms[1]
                 if t.type == 'RandomCrop']
        assert crops[0].crop_size == (384, 600), name
        with_mask = cfg.train_dataloader.dataset.pipeline[1].get('with_mask', False)
        assert with_mask == name.startswith(('mask_rcnn', 'cascade')), name
    assert _resize_scales(load(DETR)) == {(1333, s) for s in range(640, 801, 32)}
    assert load(DETR).model.data_preprocessor.pad_size_divisor == 32
    assert _resize_scales(load(RETINANET_640)) == {(1066, 640)}
    assert load(RETINANET_640).test_dataloader.dataset.pipeline[1].scale == (1066, 640)


def test_detr_reads_one_512_channel_map():
    cfg = load(DETR)
    assert cfg.model.backbone.type == 'pvt_small_f4'  # the official config's backbone name
    model = build_on_meta(cfg)
    assert model.backbone.arch == ARCHS['small']
    assert model.backbone.out_indices == (3,) and model.backbone.out_channels == (512,)
    assert neck_inputs(model.neck) == [512] and model.neck.extra_convs is None  # one map
    spelled = load(DETR)  # fresh: building mutates the head's loss config
    spelled.model.backbone = ConfigDict(type='PVT', arch='small', F4=True)
    assert count_parameters(build_on_meta(spelled)) == PARAMETERS[DETR]


@pytest.mark.parametrize('name', [DEFORMABLE_DETR, DINO])
def test_multi_scale_detr_reads_three_stages_plus_an_extra_level(name):
    model = build_on_meta(load(name))
    assert model.backbone.out_indices == (1, 2, 3)
    assert neck_inputs(model.neck) == [128, 320, 512]
    # the 4th (stride-64) level: one extra 3x3 stride-2 conv on the last stage
    assert len(model.neck.extra_convs) == 1 and model.num_feature_levels == 4
    assert model.as_two_stage and model.with_box_refine


def test_flops_match_the_official_get_flops_example():
    """whai362/PVT detection/README.md: `get_flops.py configs/gfl_pvt_v2_b2_fpn_3x_mstrain_fp16.py`
    prints "Input shape: (3, 1280, 800) Flops: 260.65 GFLOPs Params: 33.11 M"."""
    entry = config_entry(CONFIG_DIR / 'gfl_pvt_v2_b2_fpn_3x_mstrain_fp16.py', shape=(1280, 800))
    assert round(entry.gflops, 2) == 260.65 and round(entry.params / 1e6, 2) == 33.11


# ---- training on the demo data ----------------------------------------------------------------
# Shrunk through config overrides: images 1/8 of the recipe's scales (480..800 -> 60..100 px,
# crops 48..75 px), PVTv2-b0 (DETR: PVT-Tiny, still F4 with 512 channels), no drop path, few
# queries / proposals, 2 encoder + 2 decoder layers (DETR family), 2 of Sparse R-CNN's 6
# stages, Cascade Mask R-CNN's RoI heads 64 (conv) / 128 (fc) channels wide, score threshold 0 (random heads score below the recipes' 0.05), 5 classes, 4 train
# images in 2 iterations of 2, 2 val images, no warm-up.
SCALE_DIVISOR = 8
TINY = DemoDataSpec(num_train=4, num_val=2)
B0_CHANNELS = ARCHS['b0'].embed_dims
RUNS = [DETR, DEFORMABLE_DETR, DINO, THREE_X['cascade_mask_rcnn'].format('b2'),
        THREE_X['atss'].format('b2'), THREE_X['gfl'].format('b2'), SPARSE.format('b2')]


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory) -> Path:
    root = make_demo_data(tmp_path_factory.mktemp('zoo_demo'), TINY)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DATA_ENV, str(root))
        yield root


def _shrink(obj, divisor: int):
    """The pipeline with every resize scale and crop size divided by ``divisor``."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in ('scale', 'crop_size') and isinstance(v, (list, tuple)):
                v = tuple(int(x) // divisor for x in v)
            elif k == 'scales':
                v = [tuple(int(x) // divisor for x in s) for s in v]
            out[k] = _shrink(v, divisor)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_shrink(v, divisor) for v in obj)
    return obj


def _set_all(obj, key: str, value) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                obj[k] = value
            else:
                _set_all(v, key, value)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _set_all(v, key, value)


def demo_config(name: str, work_dir: Path) -> Config:
    """``name`` read as tools/train.py reads it (pvt_mm.engine.runtime), then shrunk to the
    demo data (see above)."""
    cfg = load_config(CONFIG_DIR / name, work_dir=str(work_dir))
    demo = Config.fromfile(str(CONFIG_DIR / 'demo/_base_/demo_coco_instance.py'))
    for split in ('train', 'val', 'test'):
        loader = cfg[f'{split}_dataloader']
        source = demo[f'{split}_dataloader'].dataset
        loader.dataset.update(data_root=source.data_root, metainfo=source.metainfo,
                              ann_file=source.ann_file, data_prefix=source.data_prefix,
                              pipeline=_shrink(loader.dataset.pipeline, SCALE_DIVISOR))
        loader.update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.dataset.filter_cfg = dict(filter_empty_gt=True, min_size=0)
    for evaluator in ('val_evaluator', 'test_evaluator'):
        cfg[evaluator].ann_file = demo.val_evaluator.ann_file
    model = cfg.model
    _set_all(model, 'num_classes', len(CLASSES))
    backbone = model.backbone
    backbone.update(drop_path_rate=0., init_cfg=None)  # random init: nothing is loaded
    if backbone.type == 'pvt_small_f4':  # PVT-Tiny has PVT-Small's channels: still 512
        model.backbone = backbone = ConfigDict(type='PVT', arch='tiny', F4=True,
                                               drop_path_rate=0., init_cfg=None)
    else:
        backbone.arch = 'b0'
        model.neck.in_channels = [B0_CHANNELS[i] for i in backbone.out_indices]
    if 'num_queries' in model:
        model.num_queries = model.test_cfg.max_per_img = 10 if model.type == 'DETR' else 20
    if 'dn_cfg' in model:
        model.dn_cfg.group_cfg.num_dn_queries = 10
    if 'encoder' in model:  # DETR family: 2 + 2 transformer layers
        model.encoder.num_layers = model.decoder.num_layers = 2
    if model.type == 'SparseRCNN':  # 2 of the 6 stages
        model.rpn_head.num_proposals = model.test_cfg.rcnn.max_per_img = 20
        model.roi_head.update(num_stages=2,
                              stage_loss_weights=model.roi_head.stage_loss_weights[:2],
                              bbox_head=model.roi_head.bbox_head[:2])
        model.train_cfg.rcnn = model.train_cfg.rcnn[:2]
    _set_all(model.get('test_cfg'), 'score_thr', 0.)  # random heads score below 0.05
    if model.type == 'CascadeRCNN':
        model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=50)
        model.test_cfg.rpn.update(nms_pre=100, max_per_img=20)
        model.test_cfg.rcnn.max_per_img = 10  # each of the 3 mask heads runs on these
        for stage in model.train_cfg.rcnn:
            stage.sampler.num = 32
        for head in model.roi_head.bbox_head:  # narrow 4conv1fc heads: 64 / 128 channels
            head.update(conv_out_channels=64, fc_out_channels=128)
        model.roi_head.mask_head.conv_out_channels = 64
        # mmcv's CPU RoIAlign / nms take float32 only: no bfloat16 autocast for two stages
        cfg.optim_wrapper.type = 'OptimWrapper'
        cfg.optim_wrapper.pop('loss_scale')
    cfg.param_scheduler = [s for s in cfg.param_scheduler if s.type != 'LinearLR']
    cfg.train_cfg.update(max_epochs=1, val_interval=1)
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger.interval = 1
    cfg.experiment_name = f'zoo_{uuid.uuid4().hex[:8]}'
    return cfg


class Recorder(Hook):
    """Losses of each training iteration, validation metrics, and which trainable parameters
    the run changed."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.metrics: dict = {}
        self.before: dict[str, torch.Tensor] = {}
        self.changed: dict[str, bool] = {}

    def before_train(self, runner) -> None:
        self.before = {n: p.detach().clone() for n, p in runner.model.named_parameters()
                       if p.requires_grad}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.losses.append(float(outputs['loss']))

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.metrics = dict(metrics or {})

    def after_train(self, runner) -> None:
        params = dict(runner.model.named_parameters())
        self.changed = {n: not torch.equal(p, params[n].detach()) for n, p in self.before.items()}


@pytest.mark.parametrize('name', RUNS)
def test_trains_two_iterations_and_evaluates(name, demo_root, tmp_path, monkeypatch):
    cfg = demo_config(name, tmp_path)
    # the Runner logs and dumps its config formatted by yapf: ~1/4 of these runs' time
    monkeypatch.setattr(Config, 'pretty_text', property(lambda self: repr(self.to_dict())))
    amp = cfg.optim_wrapper.type == 'CPUAmpOptimWrapper'  # the fp16 recipes, on CPU
    runner = build_runner(cfg)
    recorder = Recorder()
    runner.register_hook(recorder, priority='LOWEST')
    dtypes = []
    handle = runner.model.neck.register_forward_hook(
        lambda mod, inp, out: dtypes.append(out[0].dtype) if mod.training else None)
    runner.train()
    handle.remove()
    assert len(recorder.losses) == TINY.num_train // 2 == 2
    assert all(math.isfinite(v) and v > 0 for v in recorder.losses), recorder.losses
    assert 0. <= recorder.metrics['coco/bbox_mAP'] <= 1.
    assert isinstance(runner.optim_wrapper, CPUAmpOptimWrapper) == amp
    assert set(dtypes) == {torch.bfloat16 if amp else torch.float32}
    backbone = {n: c for n, c in recorder.changed.items() if n.startswith('backbone.')}
    assert backbone and all(backbone.values()), [n for n, c in backbone.items() if not c]
    head = {n: c for n, c in recorder.changed.items() if not n.startswith('backbone.')}
    assert sum(head.values()) >= 0.9 * len(head), [n for n, c in head.items() if not c]


# ---- metafile -----------------------------------------------------------------------------------
def test_metafile_lists_every_config():
    meta = yaml.safe_load((CONFIG_DIR / 'metafile.yml').read_text())
    collections = {c['Name'] for c in meta['Collections']}
    listed = {}
    for model in meta['Models']:
        assert model['In Collection'] in collections, model['Name']
        assert (ROOT / model['Config']).is_file(), model['Config']
        assert model['Metadata']['Training Data'] == 'COCO' or \
            model['Metadata']['Training Data'] == 'ADE20K'
        assert model['Metadata']['Parameters'] > 0
        for result in model.get('Results', []):
            assert result['Task'] and result['Dataset'] and result['Metrics']
        listed[model['Config']] = model['Name']
        name = Path(model['Config']).name
        if name in PARAMETERS:
            assert model['Metadata']['Parameters'] == PARAMETERS[name], name
    assert len(set(listed.values())) == len(meta['Models']), 'duplicate model names'
    configs = {f'configs/{p.name}' for p in CONFIG_DIR.glob('*.py')}
    assert set(listed) == configs, (sorted(configs - set(listed)), sorted(set(listed) - configs))
