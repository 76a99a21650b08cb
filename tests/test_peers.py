"""The peers' own backbone tests, ported to ``PVT`` / ``PVTv2``.

Sources (each test names its origin):
- mmdet: open-mmlab/mmdetection ``tests/test_models/test_backbones/test_pvt.py`` (v3.x)
- mmseg MiT: open-mmlab/mmsegmentation ``tests/test_models/test_backbones/test_mit.py``
- mmseg Swin: open-mmlab/mmsegmentation ``tests/test_models/test_backbones/test_swin.py``
- timm: huggingface/pytorch-image-models ``tests/test_models.py``

mmdet/mmseg expect ``AssertionError`` for bad arguments; here they are ValueError/TypeError with
a message, so the ported cases match the message instead. Inputs are shrunk where the original
used 224-512 px on larger models.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

import pytest
import torch
from helpers import official_state_dict, random_loss
from mmengine.logging import MMLogger
from mmengine.registry import MODELS

from pvt_mm.models.backbones import PVT, PVTv2
from pvt_mm.models.layers import PVTBlock

import pvt_mm  # noqa: F401  isort: skip


@contextmanager
def logged():
    """Messages logged through mmengine's current logger (print_log) inside the block."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _shapes(outs):
    return [tuple(o.shape) for o in outs]


# ---- mmdet test_pvt.py -------------------------------------------------------------------
def test_mmdet_pvt_block():
    """mmdet test_pvt_block: one encoder layer keeps the (B, N, C) token shape."""
    block = PVTBlock(64, num_heads=4, mlp_ratio=4, sr_ratio=1)
    assert block.attn.num_heads == 4
    assert block(torch.randn(1, 56 * 56, 64), (56, 56)).shape == (1, 56 * 56, 64)


@pytest.mark.parametrize('cls', [PVT, PVTv2])
def test_mmdet_pretrained_must_be_str_or_none(cls):
    """mmdet test_pvt / test_pvtv2 (also mmseg test_mit, test_swin): ``pretrained=123`` is a
    TypeError at construction."""
    with pytest.raises(TypeError, match='pretrained must be a checkpoint path'):
        cls(pretrained=123)


@pytest.mark.parametrize('cls', [PVT, PVTv2])
def test_mmdet_pretrain_img_size_must_be_a_pair(cls):
    """mmdet test_pvt / test_pvtv2: a 3-tuple pretrain_img_size is refused; an int or an
    (H, W) pair is accepted (mmseg test_swin: a 1-tuple counts for both)."""
    with pytest.raises(TypeError, match=r'pretrain_img_size must be an int or an \(H, W\)'):
        cls(pretrain_img_size=(224, 224, 224))
    assert cls(arch='tiny' if cls is PVT else 'b0', pretrain_img_size=(224,)) \
        .pretrain_img_size == (224, 224)


def test_mmdet_abs_pos_embed_pretrain_size():
    """mmdet test_pvt 'absolute position embedding' (mmseg test_swin with 112): the position
    grids follow pretrain_img_size, (H, W) pairs included, and a forward at that size runs."""
    with torch.device('meta'):
        model = PVT(pretrain_img_size=(224, 160))
    assert [s.pos_embed.shape[1] for s in model.stages] == [56 * 40, 28 * 20, 14 * 10, 7 * 5]
    model = PVT(pretrain_img_size=112)
    model.init_weights()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 112, 112))
    assert _shapes(outs)[-1] == (1, 512, 3, 3)


def _check_sizes(model, cases):
    for size, expected in cases:
        with torch.no_grad():
            outs = model(torch.randn(1, 3, *size))
        assert _shapes(outs) == [(1, c, *hw) for c, hw in zip((64, 128, 320, 512), expected)]


def test_mmdet_pvt_inference_sizes():
    """mmdet test_pvt: normal (32) and abnormal (33, 112x137) sizes of the default PVT
    (small); v1 embeddings floor."""
    _check_sizes(PVT().eval(), [((32, 32), [(8, 8), (4, 4), (2, 2), (1, 1)]),
                                ((33, 33), [(8, 8), (4, 4), (2, 2), (1, 1)]),
                                ((112, 137), [(28, 34), (14, 17), (7, 8), (3, 4)])])


def test_mmdet_pvtv2_inference_sizes():
    """mmdet test_pvtv2: the default PVTv2 (``PyramidVisionTransformerV2()`` is b2) at 32, 31
    and 112x137 (overlapping embeddings ceil)."""
    _check_sizes(PVTv2().eval(), [((32, 32), [(8, 8), (4, 4), (2, 2), (1, 1)]),
                                  ((31, 31), [(8, 8), (4, 4), (2, 2), (1, 1)]),
                                  ((112, 137), [(28, 35), (14, 18), (7, 9), (4, 5)])])


def test_mmdet_type_pvtv2_builds_with_its_default():
    """mmdet configs write ``dict(type='PyramidVisionTransformerV2')``: ``dict(type='PVTv2')``
    builds the same default variant (b2), as PVT builds small."""
    with torch.device('meta'):
        v2, v1 = MODELS.build(dict(type='PVTv2')), MODELS.build(dict(type='PVT'))
    assert (v2.arch_name, v1.arch_name) == ('b2', 'small')


# ---- mmseg test_mit.py ---------------------------------------------------------------------
def test_mmseg_mit_square_and_non_square():
    """mmseg test_mit: MiT-b0 settings (= PVTv2-b0) at 224x224 and 224x256."""
    model = PVTv2(arch='b0', out_indices=(0, 1, 2, 3)).eval()
    model.init_weights()
    for H, W in [(224, 224), (224, 256)]:
        with torch.no_grad():
            outs = model(torch.randn(1, 3, H, W))
        assert _shapes(outs) == [(1, c, H // s, W // s)
                                 for c, s in zip((32, 64, 160, 256), (4, 8, 16, 32))]


def test_mmseg_mit_init_combinations(tmp_path):
    """mmseg test_mit_init: every combination of ``pretrained`` and ``init_cfg``."""
    path = str(tmp_path / 'PATH_THAT_DO_NOT_EXIST.pth')
    model = PVTv2(arch='b0', pretrained=None, init_cfg=None)
    assert model.init_cfg is None
    model.init_weights()
    model = PVTv2(arch='b0', init_cfg=dict(type='Pretrained', checkpoint=path))
    assert model.init_cfg == dict(type='Pretrained', checkpoint=path)
    with pytest.raises(OSError):
        model.init_weights()
    with pytest.raises(TypeError):  # mmseg: at init_weights; here already at construction
        PVTv2(arch='b0', init_cfg=123).init_weights()
    with pytest.warns(DeprecationWarning):
        model = PVTv2(arch='b0', pretrained=path)
    assert model.init_cfg == dict(type='Pretrained', checkpoint=path)
    with pytest.raises(OSError):
        model.init_weights()
    with pytest.raises(ValueError, match='either pretrained or init_cfg'):
        PVTv2(arch='b0', pretrained=path, init_cfg=dict(type='Pretrained', checkpoint=path))
    for init_cfg in (None, dict(type='Pretrained', checkpoint=path), 123):
        with pytest.raises(TypeError):
            PVTv2(arch='b0', pretrained=123, init_cfg=init_cfg)


# ---- mmseg test_swin.py --------------------------------------------------------------------
@pytest.mark.parametrize('cls, arch', [(PVT, 'tiny'), (PVTv2, 'b0')])
def test_mmseg_swin_frozen_all_stages(cls, arch):
    """mmseg test_swin 'Test frozen' (also with the absolute position embedding, v1)."""
    model = cls(arch=arch, frozen_stages=4)
    model.train()
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(m.training for stage in model.stages for m in stage.modules())


def test_mmseg_swin_with_cp_forward():
    """mmseg test_swin 'checkpoint forward': every stage has with_cp, a training forward runs."""
    model = PVTv2(arch='b0', with_cp=True)
    assert all(stage.with_cp for stage in model.stages)
    model.init_weights()
    model.train()
    outs = model(torch.randn(1, 3, 56, 56))
    assert _shapes(outs)[0] == (1, 32, 14, 14)


@pytest.mark.parametrize('cls, arch, size, last', [
    (PVT, 'tiny', 255, 7), (PVTv2, 'b0', 255, 8), (PVT, 'tiny', 256, 8), (PVTv2, 'b0', 256, 8)])
def test_mmseg_swin_abnormal_sizes(cls, arch, size, last):
    """mmseg test_swin 'abnormal inference size' 255 / 256 (v1 floors, v2 ceils)."""
    with torch.no_grad():
        outs = cls(arch=arch).eval()(torch.randn(1, 3, size, size))
    assert outs[-1].shape[-2:] == (last, last)


# ---- timm test_models.py -------------------------------------------------------------------
LI_SMALL = dict(embed_dims=(32, 64, 160, 256), depths=(1, 1, 1, 1), linear=True)  # b2_li, shrunk


@pytest.mark.parametrize('cls, arch', [(PVT, 'tiny'), (PVTv2, 'b0'), (PVTv2, LI_SMALL)],
                         ids=['tiny', 'b0', 'li'])
def test_timm_model_forward(cls, arch):
    """timm test_model_forward: batch size kept, no NaN."""
    model = cls(arch=arch).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 96, 96))
    assert all(o.shape[0] == 1 and not torch.isnan(o).any() for o in outs)


@pytest.mark.parametrize('out_indices', [(0, 1, 2, 3), (0, 1), (1,)])
def test_timm_model_backward_every_parameter(out_indices):
    """timm test_model_backward: every parameter gets a gradient, also when out_indices stop
    early (DDP without find_unused_parameters needs it): later stages are not built."""
    model = PVTv2(arch='b0', out_indices=out_indices, drop_path_rate=0.).train()
    num_params = sum(p.numel() for p in model.parameters())
    random_loss(model(torch.randn(2, 3, 64, 64))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert sum(p.grad.numel() for p in model.parameters()) == num_params
    assert len(model.stages) == out_indices[-1] + 1


def test_full_checkpoint_into_fewer_stages(tmp_path):
    """A full checkpoint loads into a backbone built up to stage 2 (out_indices (0, 1)): exactly
    the keys of stages 2 and 3 are dropped, with a log line, and the maps equal the full
    model's; frozen_stages beyond the built stages freezes all of them."""
    sd = official_state_dict('b0')
    torch.save(sd, tmp_path / 'b0.pth')
    init = dict(type='Pretrained', checkpoint=str(tmp_path / 'b0.pth'))
    full = PVTv2(arch='b0', init_cfg=init).eval()
    part = PVTv2(arch='b0', out_indices=(0, 1), frozen_stages=4, init_cfg=init).eval()
    full.init_weights()
    with logged() as log:
        part.init_weights()
    dropped = [k for k in full.state_dict() if k.startswith(('stages.2.', 'stages.3.'))]
    assert any(f'dropped {len(dropped)} checkpoint keys of stage(s) 2, 3' in m for m in log)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(part(x), full(x)[:2], rtol=0, atol=0)
    assert not any(p.requires_grad for p in part.train().parameters())


@pytest.mark.parametrize('out_indices', [(0, 1, 2, 3), (1, 3), (2,)])
def test_timm_model_forward_features(out_indices):
    """timm test_model_forward_features: ``feature_info.channels()`` <-> ``out_channels``,
    reductions 4/8/16/32."""
    model = PVTv2(arch='b0', out_indices=out_indices).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 96, 96))
    assert [o.shape[1] for o in outs] == list(model.out_channels)
    assert [96 // o.shape[-1] for o in outs] == [4 * 2 ** i for i in out_indices]


@pytest.mark.parametrize('in_channels', [1, 4])
def test_timm_model_load_pretrained_in_chans(tmp_path, in_channels):
    """timm test_model_load_pretrained with ``in_chans != 3``: the 3-channel first conv is
    adapted as timm's adapt_input_conv does (sum for 1; repeat, scale by 3/in_chans for more),
    and the adaptation is logged."""
    sd = official_state_dict('b0')
    path = tmp_path / 'pvt_v2_b0.pth'
    torch.save(sd, path)
    model = PVTv2(arch='b0', in_channels=in_channels,
                  init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with logged() as log:
        model.init_weights()
    w3, w = sd['patch_embed1.proj.weight'], model.stages[0].patch_embed.proj.weight
    expected = w3.sum(1, keepdim=True) if in_channels == 1 else \
        torch.cat([w3, w3[:, :1]], 1) * 3 / in_channels
    torch.testing.assert_close(w.detach(), expected)
    torch.testing.assert_close(model.stages[1].blocks[0].attn.q.weight.detach(),
                               sd['block2.0.attn.q.weight'])
    assert any('adapt_input_conv' in m for m in log)


def test_timm_v2_min_input_size_matches_peers():
    """timm's pvt_v2 and mmdet's PyramidVisionTransformerV2 run 29-31 px and first fail at 28;
    v1 (mmdet) first fails at 31; v2-li (timm) pools adaptively and runs down to 1 px. Ours
    agree, and refuse one pixel less with our own message (not a conv error)."""
    for cls, arch, ok, bad in [(PVTv2, 'b0', 29, 28), (PVT, 'tiny', 32, 31),
                               (PVTv2, LI_SMALL, 1, 0)]:
        model = cls(arch=arch).eval()
        assert model.min_input_size == ok
        with torch.no_grad():
            outs = model(torch.randn(1, 3, ok, ok + 3))
        assert all(o.shape[-2] >= 1 for o in outs)
        with pytest.raises(ValueError, match=f'too small .* at least {ok}'):
            model(torch.randn(1, 3, bad, 64))


def test_official_pvt_small_f4_builds():
    """The official detection code's DETR config uses ``type='pvt_small_f4'``: PVT-Small with
    all stages built, returning the last map only."""
    model = MODELS.build(dict(type='pvt_small_f4', drop_path_rate=0.))
    assert (type(model), model.arch_name, model.out_indices) == (PVT, 'small', (3,))
    assert len(model.stages) == 4
    with torch.no_grad():
        assert _shapes(model.eval()(torch.randn(1, 3, 64, 64))) == [(1, 512, 2, 2)]
    with pytest.raises(TypeError, match='fixes'):
        MODELS.build(dict(type='pvt_small_f4', F4=False))
