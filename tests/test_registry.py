"""The backbones are found from mmdet's and mmseg's registries, by our names and the
official class names, without touching mmdet's own PVT."""
from __future__ import annotations

import pytest
import torch
from mmdet.registry import MODELS as DET_MODELS
from mmseg.registry import MODELS as SEG_MODELS

from pvt_mm.models.backbones import ARCHS, OFFICIAL_NAMES, PVT, PVTv2

import pvt_mm  # noqa: F401  isort: skip

pytestmark = pytest.mark.fast  # `pytest -m fast`: the model-code subset


@pytest.mark.parametrize('registry', [DET_MODELS, SEG_MODELS], ids=['mmdet', 'mmseg'])
def test_build_from_both_registries(registry):
    assert type(registry.build(dict(type='PVT', arch='small'))) is PVT
    model = registry.build(dict(type='PVTv2', arch='b2_li', out_indices=(3,)))
    assert type(model) is PVTv2 and model.arch.linear and model.out_indices == (3,)


@pytest.mark.parametrize('name', sorted(OFFICIAL_NAMES))
def test_official_aliases(name):
    for registry in (DET_MODELS, SEG_MODELS):
        with torch.device('meta'):  # the structure is what matters here
            model = registry.build(dict(type=name, drop_path_rate=0.))
        expected_cls = PVTv2 if name.startswith('pvt_v2') else PVT
        assert type(model) is expected_cls
        assert model.arch == ARCHS[OFFICIAL_NAMES[name]]


def test_alias_rejects_arch():
    with pytest.raises(TypeError, match='fixes arch'):
        DET_MODELS.build(dict(type='pvt_small', arch='tiny'))


def test_mmdet_builtin_pvt_untouched():
    from mmdet.models.backbones.pvt import PyramidVisionTransformer, PyramidVisionTransformerV2
    assert DET_MODELS.get('PyramidVisionTransformer') is PyramidVisionTransformer
    assert DET_MODELS.get('PyramidVisionTransformerV2') is PyramidVisionTransformerV2


CONFIG = """
custom_imports = dict(imports=['pvt_mm'], allow_failed_imports=False)
model = dict(
    type='RetinaNet',
    data_preprocessor=dict(type='DetDataPreprocessor'),
    backbone=dict(type='pvt_v2_b0'),
    neck=dict(type='FPN', in_channels=[32, 64, 160, 256], out_channels=64, start_level=1,
              add_extra_convs='on_input', num_outs=5),
    bbox_head=dict(
        type='RetinaHead', num_classes=3, in_channels=64, feat_channels=64,
        anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4, scales_per_octave=3,
                              ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True), loss_bbox=dict(type='L1Loss')))
"""
SCRIPT = """
import sys, torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmdet.registry import MODELS
assert 'pvt_mm' not in sys.modules
cfg = Config.fromfile(sys.argv[1])
init_default_scope('mmdet')
detector = MODELS.build(cfg.model)
print(type(detector.backbone).__name__, len(detector.extract_feat(torch.randn(1, 3, 64, 64))))
"""


def test_custom_imports_in_a_detector_config(tmp_path):
    """A config file with custom_imports finds the backbone in a process that never imported
    pvt_mm itself."""
    import subprocess
    import sys
    cfg = tmp_path / 'retinanet_pvt_v2_b0.py'
    cfg.write_text(CONFIG)
    proc = subprocess.run([sys.executable, '-c', SCRIPT, str(cfg)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ['PVTv2', '5']
