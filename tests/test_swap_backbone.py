"""tools/swap_backbone.py: stock mmdet/mmseg configs get a PVT backbone, build, and train."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from mmengine.config import Config

from mm_helpers import cached_config_index  # noqa: F401  (fixture)
from mm_helpers import IMAGE_SIZE, build_model, det_batch, seg_batch, train_one_step
from pvt_mm.models.backbones import ARCHS

ROOT = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location('swap_backbone', ROOT / 'tools' / 'swap_backbone.py')
swap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(swap)

ADE_CLASSES = 150
# name -> (stock config, PVT arch, kind of synthetic batch)
STOCK = {
    'faster_rcnn': ('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', 'tiny', 'det'),
    'fcos': ('mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', 'b0', 'det'),
    'cascade_mask_rcnn': ('mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py', 'b0',
                          'det_masks'),
    'upernet': ('mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py', 'b0', 'seg'),
}

pytestmark = pytest.mark.usefixtures('cached_config_index')


@pytest.mark.parametrize('name', list(STOCK))
def test_swapped_stock_config_builds_and_trains(name, tmp_path):
    config, arch, batch = STOCK[name]
    out = swap.swap_backbone(config, arch, tmp_path / f'{name}_pvt.py')
    cfg = Config.fromfile(str(out))
    assert f"_base_ = '{config}'" in out.read_text()
    assert 'pvt_mm' in cfg.custom_imports.imports
    channels = list(ARCHS[arch].embed_dims)
    backbone = cfg.model.backbone
    assert backbone.type == ('PVT' if ARCHS[arch].version == 1 else 'PVTv2')
    assert 'depth' not in backbone and 'norm_eval' not in backbone  # ResNet keys deleted
    assert backbone.init_cfg.checkpoint.endswith('.pth')
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert cfg.model.data_preprocessor.bgr_to_rgb is True
    if batch == 'seg':
        assert cfg.model.decode_head.in_channels == channels
        assert cfg.model.auxiliary_head.in_channels == channels[cfg.model.auxiliary_head.in_index]
        assert cfg.model.pretrained is None
        # the poly floor follows the learning rate: 1e-4 at SGD lr 0.01 -> 1e-6 at 1e-4
        assert math.isclose(cfg.param_scheduler[0].eta_min, 1e-6)
        cfg.model.data_preprocessor.size = (IMAGE_SIZE, IMAGE_SIZE)  # not the 512 crop
        data = seg_batch(ADE_CLASSES)
    else:
        assert cfg.model.neck.in_channels == channels
        data = det_batch(with_masks=batch == 'det_masks')
    if name == 'fcos':
        assert cfg.model.neck.start_level == 1  # kept from the stock config

    model = build_model(cfg)
    model.backbone.reset_drop_path(0.)  # every backbone parameter gets a gradient
    loss, changed = train_one_step(model, cfg, data)
    assert math.isfinite(loss) and loss > 0
    backbone_changed = [c for n, c in changed.items() if n.startswith('backbone.')]
    assert backbone_changed and all(backbone_changed)
    assert any(c for n, c in changed.items() if not n.startswith('backbone.'))


def test_local_config_path_is_inherited_relatively(tmp_path):
    """A path CONFIG is referenced relative to the output, so the pair can move together."""
    src = tmp_path / 'mine' / 'retina.py'
    src.parent.mkdir()
    src.write_text("_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'\n"
                   "model = dict(neck=dict(out_channels=128), bbox_head=dict(in_channels=128,"
                   " feat_channels=128))\n")
    out = swap.swap_backbone(str(src), 'pvt_v2_b1', tmp_path / 'gen' / 'retina_b1.py',
                             checkpoint=None, optimizer='keep')
    assert "_base_ = '../mine/retina.py'" in out.read_text()
    cfg = Config.fromfile(str(out))
    assert cfg.model.backbone.arch == 'b1' and 'init_cfg' not in cfg.model.backbone
    assert cfg.model.neck.out_channels == 128 and cfg.model.neck.start_level == 1
    assert cfg.model.neck.in_channels == [64, 128, 320, 512]
    assert cfg.optim_wrapper.optimizer.type == 'SGD'


def _model_cfg(**model) -> Config:
    return Config(dict(model=dict(type='X', backbone=dict(type='ResNet'), **model)))


def test_heads_and_neck_lists():
    # no neck: every mmseg head reading the backbone is remapped through in_index
    heads = [dict(type='FCNHead', in_channels=1024, in_index=2),
             dict(type='FCNHead', in_channels=[1024, 2048], in_index=[2, 3])]
    out = swap.swap_overrides(_model_cfg(decode_head=dict(in_channels=[512], in_index=[1]),
                                         auxiliary_head=heads), 'small', optimizer='keep')
    assert out['model']['decode_head'] == dict(in_channels=[128])
    assert [h['in_channels'] for h in out['model']['auxiliary_head']] == [320, [320, 512]]
    assert out['model']['auxiliary_head'][0]['type'] == 'FCNHead'  # lists are written whole
    # a list of necks: the first reads the backbone
    necks = [dict(type='FPN', in_channels=[256, 512, 1024, 2048]), dict(type='BFP')]
    out = swap.swap_overrides(_model_cfg(neck=necks), 'b0', optimizer='keep')
    assert out['model']['neck'] == [dict(type='FPN', in_channels=[32, 64, 160, 256]),
                                     dict(type='BFP')]
    # a single-input neck (YOLOF-style) with one backbone output
    out = swap.swap_overrides(_model_cfg(neck=dict(type='DilatedEncoder', in_channels=2048)),
                              'b2', out_indices=[3], optimizer='keep')
    assert out['model']['neck'] == dict(in_channels=512)
    assert out['model']['backbone']['out_indices'] == (3,)


@pytest.mark.parametrize('model,kwargs,match', [
    (dict(), dict(arch='smal'), "unknown PVT arch 'smal'"),
    (dict(neck=dict(type='FPN', in_channels=[1, 2, 3])), dict(arch='b0'), 'has 3 inputs'),
    (dict(neck=dict(type='Odd')), dict(arch='b0'), 'no in_channels'),
    (dict(roi_head=dict(type='StandardRoIHead')), dict(arch='b0'), 'no neck'),
    (dict(neck=dict(type='FPN', in_channels=[1, 2, 3, 4])),
     dict(arch='b0', out_indices=[2, 5, 8, 11]), '--out-indices'),
])
def test_clear_errors(model, kwargs, match):
    with pytest.raises(swap.SwapError, match=match):
        swap.swap_overrides(_model_cfg(**model), **kwargs)


def test_cli(tmp_path, capsys):
    out = tmp_path / 'upernet_pvt_t.py'
    assert swap.main(['mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py', '--arch',
                      'tiny', '--out', str(out), '--checkpoint', 'none', '--lr', '2e-4']) == 0
    assert f'wrote {out}' in capsys.readouterr().out
    cfg = Config.fromfile(str(out))
    assert cfg.optim_wrapper.optimizer.lr == 2e-4 and 'init_cfg' not in cfg.model.backbone
    assert cfg.model.auxiliary_head.in_channels == 320
    assert swap.main(['missing/config.py', '--arch', 'b0', '--out', str(out)]) == 2
    assert "config 'missing/config.py' not found" in capsys.readouterr().err
    assert swap.main(['mmdet::faster_rcnn/no-such.py', '--arch', 'b0', '--out', str(out)]) == 2
    assert 'cannot load config' in capsys.readouterr().err
