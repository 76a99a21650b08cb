"""The shipped detector/segmentor configs: they load, build with the right registry, follow
the official recipes and match the published parameter counts (/work/shared/README.md)."""
from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import pytest
from mmengine.config import Config

from mm_helpers import cached_config_index  # noqa: F401  (fixture)
from mm_helpers import (IMAGE_SIZE, build_model, build_on_meta, count_parameters, det_batch,
                        seg_batch, train_one_step)
from pvt_mm.models.backbones import ARCHS, OFFICIAL_NAMES

CONFIG_DIR = Path(__file__).parents[1] / 'configs'
RELEASE_URL = 'https://github.com/whai362/PVT/releases/download/v2/'
TOKENS = {'pvt_t': 'tiny', 'pvt_s': 'small', 'pvt_m': 'medium', 'pvt_l': 'large',
          **{f'pvt_v2_{a}': a for a in ('b0', 'b1', 'b2', 'b2_li', 'b3', 'b4', 'b5')}}
# family -> (file name pattern, scope, AdamW lr); PUBLISHED columns follow this order
FAMILIES = {
    'retinanet': ('retinanet_{}_fpn_1x_coco.py', 'mmdet', 1e-4),
    'mask_rcnn': ('mask_rcnn_{}_fpn_1x_coco.py', 'mmdet', 2e-4),
    'fpn': ('fpn_{}_512x512_40k_ade20k.py', 'mmseg', 2e-4),
}
# Published parameter counts (M): RetinaNet, Mask R-CNN, Semantic FPN (None: not published)
PUBLISHED = {
    'pvt_t': (23.0, 32.9, 17.0), 'pvt_s': (34.2, 44.1, 28.2), 'pvt_m': (53.9, 63.9, 48.0),
    'pvt_l': (71.1, 81.0, 65.1), 'pvt_v2_b0': (13.0, 23.5, 7.6),
    'pvt_v2_b1': (23.8, 33.7, 17.8), 'pvt_v2_b2_li': (32.3, 42.2, None),
    'pvt_v2_b2': (35.1, 45.0, 29.1), 'pvt_v2_b3': (55.0, 64.9, 49.0),
    'pvt_v2_b4': (72.3, 82.2, 66.3), 'pvt_v2_b5': (91.7, 101.6, 85.7),
}
TOLERANCE_M = 0.1
NO_DROP_PATH = {'medium', 'large'}  # official PVT v1 M/L detection/segmentation backbones
BATCH_1 = {'large', 'b4', 'b5'}  # official detection configs: 8 GPUs x 1 image, lr / 1.4
LARGE_LR_DIVISOR = 1.4
CASES = [(fam, tok) for fam in FAMILIES for tok in TOKENS]

pytestmark = pytest.mark.usefixtures('cached_config_index')


def config_path(family: str, token: str) -> Path:
    return CONFIG_DIR / FAMILIES[family][0].format(token)


@functools.lru_cache(maxsize=None)
def load(family: str, token: str) -> Config:
    cfg = Config.fromfile(str(config_path(family, token)))
    assert cfg.default_scope == FAMILIES[family][1]
    return cfg


@functools.lru_cache(maxsize=None)
def parameter_count(family: str, token: str) -> int:
    cfg = load(family, token)
    model = build_on_meta(cfg)
    backbone, arch = model.backbone, TOKENS[token]
    assert type(backbone).__name__ == ARCHS[arch].backbone_type
    assert backbone.arch == ARCHS[arch]
    assert list(model.neck.in_channels) == list(backbone.out_channels)
    return count_parameters(model)


def test_config_set_is_complete():
    expected = {config_path(f, t).name for f, t in CASES}
    present = {p.name for p in CONFIG_DIR.glob('*.py')}
    assert expected <= present, f'missing: {sorted(expected - present)}'
    assert (CONFIG_DIR / 'retinanet_pvt_s_fpn_1x_coco.py').is_file()


@pytest.mark.parametrize('family,token', CASES, ids=[f'{f}-{t}' for f, t in CASES])
def test_parameter_count_matches_paper(family, token):
    published = PUBLISHED[token][list(FAMILIES).index(family)]
    count = parameter_count(family, token) / 1e6
    if published is None:
        # no published Semantic FPN PVTv2-b2-li: the backbone difference to b2 must be the
        # one measured with RetinaNet
        delta = parameter_count(family, 'pvt_v2_b2') - parameter_count(family, token)
        assert delta == parameter_count('retinanet', 'pvt_v2_b2') - \
            parameter_count('retinanet', token)
    else:
        assert abs(count - published) <= TOLERANCE_M, f'{count:.3f}M vs published {published}M'


@pytest.mark.parametrize('family,token', CASES, ids=[f'{f}-{t}' for f, t in CASES])
def test_family_config_keeps_the_official_recipe(family, token):
    cfg = load(family, token)
    arch = TOKENS[token]
    backbone = cfg.model.backbone
    assert cfg.custom_imports == dict(imports=['pvt_mm'], allow_failed_imports=False)
    official = {v: k for k, v in OFFICIAL_NAMES.items()}[arch]
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=f'{RELEASE_URL}{official}.pth')
    assert backbone.drop_path_rate == (0. if arch in NO_DROP_PATH else 0.1)
    optimizer = cfg.optim_wrapper.optimizer
    lr = FAMILIES[family][2]
    if family != 'fpn' and arch in BATCH_1:
        lr /= LARGE_LR_DIVISOR
        assert cfg.train_dataloader.batch_size == 1 and cfg.auto_scale_lr.base_batch_size == 8
    assert (optimizer.type, optimizer.weight_decay) == ('AdamW', 1e-4)
    assert math.isclose(optimizer.lr, lr)
    if family == 'fpn':
        assert cfg.train_cfg.max_iters == 40000 and cfg.train_dataloader.batch_size == 4
        assert [(s.type, s.power, s.eta_min, s.end) for s in cfg.param_scheduler] == \
            [('PolyLR', 0.9, 0., 40000)]
        assert cfg.model.pretrained is None and cfg.model.decode_head.num_classes == 150
        assert cfg.model.decode_head.channels == 128 and cfg.model.neck.out_channels == 256
    else:
        assert cfg.train_cfg.max_epochs == 12
        steps = [s for s in cfg.param_scheduler if s.type == 'MultiStepLR']
        warmup = [s for s in cfg.param_scheduler if s.type == 'LinearLR']
        assert steps[0].milestones == [8, 11] and warmup[0].end == 500
        neck = cfg.model.neck
        assert neck.num_outs == 5 and neck.out_channels == 256
        if family == 'retinanet':
            assert (neck.start_level, neck.add_extra_convs) == (1, 'on_input')


@pytest.mark.parametrize('family', list(FAMILIES))
def test_b0_config_trains_one_step(family, monkeypatch, tmp_path):
    """A real build (no weights loaded: the hub cache is empty) and one AdamW step."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    cfg = copy.deepcopy(load(family, 'pvt_v2_b0'))
    if family == 'fpn':
        # pad to the test image size, not to the 512x512 training crop
        cfg.model.data_preprocessor.size = (IMAGE_SIZE, IMAGE_SIZE)
    model = build_model(cfg)
    with pytest.raises(FileNotFoundError, match='pvt_v2_b0.pth'):
        model.backbone.init_weights()  # weights load only here, offline
    model.backbone.reset_drop_path(0.)  # every backbone parameter gets a gradient
    data = seg_batch(150) if family == 'fpn' else det_batch(with_masks=family == 'mask_rcnn')
    loss, changed = train_one_step(model, cfg, data)
    assert math.isfinite(loss) and loss > 0
    backbone = {n: c for n, c in changed.items() if n.startswith('backbone.')}
    assert all(backbone.values()), [n for n, c in backbone.items() if not c]
