"""pvt_mm.swap: stock mmdet/mmseg configs of every kind get a PVT backbone, build and run;
kinds that cannot be swapped are refused with the reason; the coverage sweep runs offline."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mm_helpers import cached_config_index  # noqa: F401  (fixture)
from mm_helpers import IMAGE_SIZE, build_model, det_batch, seg_batch, train_one_step
from pvt_mm import swap
from pvt_mm.models.backbones import ARCHS
from pvt_mm.swap.sweep import (NetworkBlocked, build_and_run, coverage_markdown,
                               fetches_at_build, find_configs, offline, sweep, totals)

ROOT = Path(__file__).parents[1]
ADE_CLASSES = 150
B0 = list(ARCHS['b0'].embed_dims)  # [32, 64, 160, 256]
# name -> (stock config, PVT arch, kind of synthetic batch)
STOCK = {
    'faster_rcnn': ('mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', 'tiny', 'det'),
    'fcos': ('mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', 'b0', 'det'),
    'cascade_mask_rcnn': ('mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py', 'b0',
                          'det_masks'),
    'upernet': ('mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py', 'b0', 'seg'),
}

pytestmark = pytest.mark.usefixtures('cached_config_index')


def _swapped(config: str, arch: str = 'b0', **kwargs) -> Config:
    return swap.swap_config(swap.load_stock_config(config), arch, checkpoint=None, **kwargs)


@pytest.mark.parametrize('name', list(STOCK))
def test_swapped_stock_config_builds_and_trains(name, tmp_path):
    config, arch, batch = STOCK[name]
    out = swap.write_swapped_config(config, arch, tmp_path / f'{name}_pvt.py')
    cfg = Config.fromfile(str(out))
    assert f"_base_ = '{config}'" in out.read_text()
    assert 'pvt_mm' in cfg.custom_imports.imports
    channels = list(ARCHS[arch].embed_dims)
    backbone = cfg.model.backbone
    assert backbone.type == ARCHS[arch].backbone_type
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


# name -> (stock config, model overrides for a 64 px run, check of the swapped model config)
KINDS = {
    # MaskFormer-style pixel decoders read every backbone map (no neck)
    'mask2former_mmdet': ('mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py',
                          {}, lambda m: m.panoptic_head.in_channels == B0),
    'mask2former_mmseg': ('mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py',
                          {}, lambda m: m.decode_head.in_channels == B0),
    # DeepLabV3+: the ASPP reads stage 3 by in_index, the c1 skip reads map 0
    'deeplabv3plus': ('mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024.py',
                      {}, lambda m: (m.decode_head.in_channels, m.decode_head.c1_in_channels,
                                     m.auxiliary_head.in_channels) == (256, 32, 160)),
    # a tracker: the backbone of model.detector; whole-detector weights dropped
    'qdtrack': ('mmdet::qdtrack/qdtrack_faster-rcnn_r50_fpn_8xb2-4e_mot17halftrain_'
                'test-mot17halfval.py', {},
                lambda m: m.detector.neck.in_channels == B0 and m.detector.init_cfg is None
                and m.detector.backbone.type == 'PVTv2' and 'backbone' not in m),
    # DETR reads C5 only: PVT's last stage alone
    'detr': ('mmdet::detr/detr_r50_8xb2-150e_coco.py', {},
             lambda m: m.backbone.out_indices == (3,) and m.neck.in_channels == [256]),
    # ReID: GlobalAveragePooling neck, the head takes the last stage's channels (its 8x4
    # pooling kernel wants the 256x128 crops: image_size 128 gives them)
    'reid': ('mmdet::reid/reid_r50_8xb32-6e_mot15train80_test-mot15val20.py', {},
             lambda m: m.head.in_channels == 256 and m.init_cfg is None
             and m.data_preprocessor.to_rgb is True),
    # DETR family on three stages; the ChannelMapper adds the 4th level (issue 10)
    'deformable_detr': ('mmdet::deformable_detr/deformable-detr-refine-twostage_r50_16xb2-'
                        '50e_coco.py', dict(num_queries=20),
                        lambda m: m.backbone.out_indices == (1, 2, 3)
                        and m.neck.in_channels == B0[1:] and m.neck.num_outs == 4),
    'dino': ('mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
             dict(num_queries=20, dn_cfg=dict(group_cfg=dict(num_dn_queries=10))),
             lambda m: m.neck.in_channels == B0[1:] and m.neck.num_outs == 4),
}


@pytest.mark.parametrize('name', list(KINDS))
def test_swap_kinds_build_and_predict(name):
    config, shrink, check = KINDS[name]
    cfg = _swapped(config)
    assert check(cfg.model), cfg.model
    cfg.merge_from_dict(dict(model=shrink))  # fewer queries: a 64 px image has few tokens
    build_and_run(cfg, image_size=128 if name == 'reid' else IMAGE_SIZE)  # test_step


def test_knet_nested_kernel_generate_head():
    m = _swapped('mmseg::knet/knet-s3_r50-d8_deeplabv3_8xb2-adamw-80k_ade20k-512x512.py').model
    assert m.decode_head.kernel_generate_head.in_channels == 256  # in_index 3
    assert m.decode_head.kernel_update_head[0].in_channels == 512  # its own width: kept
    assert m.auxiliary_head.in_channels == 160


def test_jpu_neck_and_the_heads_behind_it():
    """FastFCN: JPU takes a tuple; the auxiliary head reads a map JPU passes through, the
    decode head JPU's own output (unchanged)."""
    m = _swapped('mmseg::fastfcn/fastfcn_r50-d32_jpu_aspp_4xb2-80k_cityscapes-512x1024.py').model
    assert m.neck.in_channels == (64, 160, 256)
    assert m.auxiliary_head.in_channels == 160 and m.decode_head.in_channels == 2048


def test_bisenetv1_wrapper_splits_stage_3_between_its_paths():
    cfg = _swapped('mmseg::bisenetv1/bisenetv1_r50-d32-in1k-pre_4xb4-160k_cityscapes-'
                   '1024x1024.py')
    m = cfg.model
    assert m.backbone.type == 'BiSeNetV1' and m.backbone.backbone_cfg.type == 'PVTv2'
    assert m.backbone.context_channels == (80, 160, 256)
    assert m.backbone.spatial_channels == (256, 256, 256, 80)
    assert [h.in_channels for h in m.auxiliary_head] == [80, 80]
    assert m.decode_head.in_channels == 1024  # the fusion module's own width
    build_and_run(cfg, image_size=IMAGE_SIZE)


def test_c4_detector_gets_a_channel_adapter():
    """C4: PVT's stage 3 is mapped to the 1024 channels ResNet's res5 RoI head was built for."""
    cfg = _swapped('mmdet::faster_rcnn/faster-rcnn_r50-caffe-c4_ms-1x_coco.py')
    assert cfg.model.backbone.out_indices == (2,)
    assert cfg.model.neck == dict(type='ChannelMapper', in_channels=[160], out_channels=1024,
                                  kernel_size=1, norm_cfg=None, act_cfg=None, num_outs=1)
    model = build_model(cfg).eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.zeros(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 1024, 4, 4)]


def test_matches_the_model_zoo_detr_family_configs():
    """The swap reproduces the hand-written Deformable DETR / DINO PVTv2-b2 configs."""
    for stock, ours in [
            ('mmdet::deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py',
             'configs/deformable_detr_refine_twostage_pvt_v2_b2_16xb2_50e_coco.py'),
            ('mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
             'configs/dino_4scale_pvt_v2_b2_8xb2_12e_coco.py')]:
        swapped = swap.swap_config(swap.load_stock_config(stock), 'b2')
        zoo = Config.fromfile(str(ROOT / ours))
        assert swapped.model.to_dict() == zoo.model.to_dict(), ours
        assert swapped.optim_wrapper.to_dict() == zoo.optim_wrapper.to_dict()


@pytest.mark.parametrize('config,match', [
    ('mmdet::detectors/cascade-rcnn_r50-rfp_1x_coco.py', 'recursive feature pyramid'),
    ('mmdet::tridentnet/tridentnet_r50-caffe_1x_coco.py', 'trident branches'),
    ('mmseg::icnet/icnet_r50-d8-in1k-pre_4xb2-160k_cityscapes-832x832.py', 'layer1..layer4'),
])
def test_refused_kinds_say_why(config, match):
    with pytest.raises(swap.SwapError, match=match):
        swap.swap_overrides(swap.load_stock_config(config), 'b0')


def test_names_the_mmdet_loader_refuses(tmp_path):
    """``gn+ws`` is not a name mmengine's ``mmdet::`` loader accepts: the stock config is
    written flat beside the swapped one, which inherits it by a relative path (no installed
    package path in either file: the pair moves to another machine)."""
    name = 'mmdet::gn+ws/faster-rcnn_r50_fpn_gn-ws-all_1x_coco.py'
    with pytest.raises(ValueError):  # mmengine itself
        Config.fromfile(str(_stub(tmp_path, name)))
    out = swap.write_swapped_config(name, 'b0', tmp_path / 'gnws_b0.py', checkpoint=None)
    stock = tmp_path / 'gnws_b0_stock.py'
    assert "_base_ = './gnws_b0_stock.py'" in out.read_text()
    for text in (out.read_text(), stock.read_text()):
        assert 'site-packages' not in text and '.mim' not in text
    moved = tmp_path / 'elsewhere'
    moved.mkdir()
    for f in (out, stock):
        (moved / f.name).write_text(f.read_text())
    cfg = Config.fromfile(str(moved / out.name))
    assert cfg.model.neck.in_channels == B0 and cfg.model.neck.norm_cfg.type == 'GN'
    expected = swap.swap_config(swap.load_stock_config(name), 'b0', checkpoint=None)
    assert cfg.model.to_dict() == expected.model.to_dict()


@pytest.mark.parametrize('config', [
    'mmdet::qdtrack/qdtrack_faster-rcnn_r50_fpn_8xb2-4e_mot17halftrain_test-mot17halfval.py',
    'mmseg::bisenetv1/bisenetv1_r50-d32-in1k-pre_4xb4-160k_cityscapes-1024x1024.py',
    'mmdet::faster_rcnn/faster-rcnn_r50-caffe-c4_ms-1x_coco.py',
    'mmdet::soft_teacher/soft-teacher_faster-rcnn_r50-caffe_fpn_180k_semi-0.01-coco.py',
])
def test_written_config_equals_the_swapped_config(config, tmp_path):
    """The file the CLI writes (inheriting the stock config) loads to what swap_config
    returns: nested detectors, lists of heads, added necks, nested preprocessors."""
    out = swap.write_swapped_config(config, 'b1', tmp_path / 'swapped.py')
    written = Config.fromfile(str(out))
    swapped = swap.swap_config(swap.load_stock_config(config), 'b1')
    assert written.model.to_dict() == swapped.model.to_dict()
    assert written.optim_wrapper.to_dict() == swapped.optim_wrapper.to_dict()


def _stub(tmp_path: Path, base: str) -> Path:
    path = tmp_path / 'stub.py'
    path.write_text(f'_base_ = {base!r}\n')
    return path


def test_local_config_path_is_inherited_relatively(tmp_path):
    """A path CONFIG is referenced relative to the output, so the pair can move together."""
    src = tmp_path / 'mine' / 'retina.py'
    src.parent.mkdir()
    src.write_text("_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'\n"
                   "model = dict(neck=dict(out_channels=128), bbox_head=dict(in_channels=128,"
                   " feat_channels=128))\n")
    out = swap.write_swapped_config(str(src), 'pvt_v2_b1', tmp_path / 'gen' / 'retina_b1.py',
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
    (dict(decode_head=dict(type='Mask2FormerHead', in_channels=[1, 2, 3])), dict(arch='b0'),
     'reads 3 maps'),
])
def test_swap_refusals_name_what_cannot_be_swapped(model, kwargs, match):
    with pytest.raises(swap.SwapError, match=match):
        swap.swap_overrides(_model_cfg(**model), **kwargs)


def test_sweep_never_reaches_the_network():
    with offline():
        with pytest.raises(NetworkBlocked):
            torch.hub.load_state_dict_from_url('https://example.com/w.pth', progress=False)
    ld = swap.load_stock_config('mmdet::ld/ld_r50-gflv1-r101_fpn_1x_coco.py')
    assert 'teacher' in fetches_at_build(ld.model.to_dict())
    assert fetches_at_build(swap.load_stock_config(STOCK['fcos'][0]).model.to_dict()) is None


def test_sweep_slice():
    """A slice of the coverage sweep: a single-input neck, a JPU neck, a refused wrapper."""
    folders = {'yolof', 'fastfcn', 'icnet'}
    configs = [c for s in ('mmdet', 'mmseg') for _, c in find_configs(s, only=folders)]
    assert len(configs) == 3
    rows = sweep(configs, arch='b0', image_size=IMAGE_SIZE, log=lambda m: None)
    status = {r.folder: (r.stock, r.swap) for r in rows}
    assert status == {'yolof': ('works', 'swapped'), 'fastfcn': ('works', 'swapped'),
                      'icnet': ('works', 'refused')}
    assert totals(rows)['swapped'] == 2
    page = coverage_markdown(rows, 'b0', IMAGE_SIZE, 'test', 1.)
    assert '**Totals: 2 of 3 stock configs' in page and 'ICNet calls' in page


def test_cli(tmp_path, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location('swap_backbone_cli',
                                                  ROOT / 'tools' / 'swap_backbone.py')
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / 'upernet_pvt_t.py'
    assert cli.main(['mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py', '--arch',
                     'tiny', '--out', str(out), '--checkpoint', 'none', '--lr', '2e-4']) == 0
    assert f'wrote {out}' in capsys.readouterr().out
    cfg = Config.fromfile(str(out))
    assert cfg.optim_wrapper.optimizer.lr == 2e-4 and 'init_cfg' not in cfg.model.backbone
    assert cfg.model.auxiliary_head.in_channels == 320
    assert cli.main(['missing/config.py', '--arch', 'b0', '--out', str(out)]) == 2
    assert "config 'missing/config.py' not found" in capsys.readouterr().err
    assert cli.main(['mmdet::faster_rcnn/no-such.py', '--arch', 'b0', '--out', str(out)]) == 2
    assert 'cannot load config' in capsys.readouterr().err
    assert cli.main(['mmdet::detectors/cascade-rcnn_r50-rfp_1x_coco.py', '--arch', 'b0',
                     '--out', str(out)]) == 2
    assert 'recursive feature pyramid' in capsys.readouterr().err
