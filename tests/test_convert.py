"""Checkpoint conversion and pretrained loading: all layouts, strictness, safety, and the
files written (``.pth`` and ``.safetensors`` alike)."""
from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import build, official_state_dict
from mmdet.models.backbones.pvt import pvt_convert

from pvt_mm.loading.checkpoint import read_checkpoint, resolve_checkpoint, write_checkpoint
from pvt_mm.models.backbones.pretrained import load_pretrained
from pvt_mm.loading.convert import CheckpointError, convert_pvt_checkpoint

pytestmark = pytest.mark.fast  # `pytest -m fast`: the model-code subset

ROOT = Path(__file__).resolve().parents[1]
ARCHS_UNDER_TEST = ['tiny', 'b0', 'b2_li']


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize('arch', ARCHS_UNDER_TEST)
def test_official_checkpoint_loads_strictly(arch):
    sd = official_state_dict(arch)
    snapshot = {k: v.clone() for k, v in sd.items()}
    converted = convert_pvt_checkpoint(sd)
    _assert_same(sd, snapshot)  # pure: the input is untouched
    model = build(arch)
    model.load_state_dict(converted, strict=True)
    assert not any(k.startswith(('head', 'cls_token', 'norm.')) for k in converted)
    if arch == 'tiny':
        assert sd['pos_embed4'].shape[1] == 50
        assert converted['stages.3.pos_embed'].shape[1] == 49
        assert torch.equal(converted['stages.3.pos_embed'], sd['pos_embed4'][:, 1:])


@pytest.mark.parametrize('arch', ARCHS_UNDER_TEST)
def test_conversion_is_idempotent(arch):
    once = convert_pvt_checkpoint(official_state_dict(arch))
    _assert_same(convert_pvt_checkpoint(once), once)


@pytest.mark.parametrize('arch', ['tiny', 'b0'])
def test_mmdet_layout(arch):
    sd = official_state_dict(arch)
    expected = convert_pvt_checkpoint(sd)
    _assert_same(convert_pvt_checkpoint(pvt_convert(sd)), expected)
    # a whole mmdet detector checkpoint: only the backbone is taken
    detector = {'meta': {'epoch': 12}, 'state_dict': {
        **{f'backbone.{k}': v for k, v in pvt_convert(sd).items()},
        'neck.lateral_convs.0.conv.weight': torch.zeros(1)}}
    _assert_same(convert_pvt_checkpoint(detector), expected)


def test_timm_layout():
    import timm
    from timm.models.pvt_v2 import checkpoint_filter_fn
    sd = official_state_dict('b0')
    timm_model = timm.create_model('pvt_v2_b0', pretrained=False)
    timm_model.load_state_dict(checkpoint_filter_fn(sd, timm_model), strict=True)
    _assert_same(convert_pvt_checkpoint(timm_model.state_dict()), convert_pvt_checkpoint(sd))


@pytest.mark.parametrize('wrapper', ['model', 'state_dict'])
def test_wrapped_and_ddp_prefixed(wrapper):
    sd = official_state_dict('b0')
    wrapped = {wrapper: {f'module.{k}': v for k, v in sd.items()}}
    _assert_same(convert_pvt_checkpoint(wrapped), convert_pvt_checkpoint(sd))


def test_unplaceable_keys_are_named():
    sd = official_state_dict('b0')
    sd['block1.0.attn.qkv.weight'] = torch.zeros(3, 3)
    sd['decode_head.conv.weight'] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r'2 key\(s\).*block1\.0\.attn\.qkv\.weight.*'
                                              r'decode_head\.conv\.weight'):
        convert_pvt_checkpoint(sd)


def test_mixed_layouts_and_non_tensors_are_errors():
    sd = official_state_dict('b0')
    both = dict(sd)
    both['stages.0.patch_embed.proj.weight'] = sd['patch_embed1.proj.weight']
    with pytest.raises(CheckpointError, match='same parameter'):
        convert_pvt_checkpoint(both)
    sd['norm1.weight'] = [1.0]
    with pytest.raises(CheckpointError, match='not tensors.*norm1.weight'):
        convert_pvt_checkpoint(sd)
    with pytest.raises(CheckpointError, match='must be a dict'):
        convert_pvt_checkpoint([1, 2])
    with pytest.raises(CheckpointError, match='no PVT backbone parameters'):
        convert_pvt_checkpoint({'head.weight': torch.zeros(1)})


def _save(tmp_path: Path, obj, name: str = 'ckpt.pth') -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_missing_keys_and_shape_mismatches_are_named(tmp_path):
    sd = official_state_dict('b0')
    del sd['block2.1.mlp.fc2.bias']
    with pytest.raises(CheckpointError, match=r'missing key.*stages\.1\.blocks\.1\.mlp\.fc2\.bias'):
        load_pretrained(build('b0'), _save(tmp_path, sd))
    # a b0 checkpoint does not fit b1
    with pytest.raises(CheckpointError, match=r'shape mismatch.*stages\.0\.patch_embed\.proj\.weight'):
        load_pretrained(build('b1'), _save(tmp_path, official_state_dict('b0')))
    # a v1 checkpoint does not fit v2: pos_embed is unexpected, stage norms are missing
    with pytest.raises(CheckpointError, match=r'unexpected key.*pos_embed'):
        load_pretrained(build('b1'), _save(tmp_path, official_state_dict('tiny')))


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_hostile_pickle_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'hostile.pth'
    with open(path, 'wb') as f:
        pickle.dump({'patch_embed1.proj.weight': _Exploit(marker)}, f)
    with pytest.raises(CheckpointError, match='not a readable PyTorch checkpoint'):
        read_checkpoint(path)
    assert not marker.exists()
    torch.save({'x': _Exploit(marker)}, tmp_path / 'hostile_zip.pth')
    marker.unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match='other than tensors'):
        read_checkpoint(tmp_path / 'hostile_zip.pth')
    assert not marker.exists()


def test_corrupt_and_truncated_files(tmp_path):
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'\x00not a checkpoint' * 10)
    with pytest.raises(CheckpointError, match='not a readable PyTorch checkpoint'):
        read_checkpoint(junk)
    good = _save(tmp_path, official_state_dict('b0'))
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match='not a readable PyTorch checkpoint'):
        read_checkpoint(truncated)


@pytest.fixture
def hub_dir(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    yield tmp_path / 'hub' / 'checkpoints'
    torch.hub.set_dir(old)


def test_release_url_resolves_from_hub_cache_only(hub_dir):
    url = 'https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b0.pth'
    with pytest.raises(FileNotFoundError, match=f'Put pvt_v2_b0.pth at {hub_dir}/pvt_v2_b0.pth'):
        resolve_checkpoint(url)
    with pytest.raises(FileNotFoundError, match='--cfg-options model.backbone.init_cfg.checkpoint'):
        resolve_checkpoint('/nonexistent/pvt_v2_b0.pth')
    hub_dir.mkdir(parents=True)
    torch.save(official_state_dict('b0'), hub_dir / 'pvt_v2_b0.pth')
    assert resolve_checkpoint(url) == hub_dir / 'pvt_v2_b0.pth'
    assert resolve_checkpoint('pvt_v2_b0.pth') == hub_dir / 'pvt_v2_b0.pth'
    with pytest.raises(FileNotFoundError, match='scheme'):
        resolve_checkpoint('s3://bucket/pvt_v2_b0.pth')


def test_init_cfg_and_pretrained_kwarg_load(tmp_path):
    from mmdet.registry import MODELS
    sd = official_state_dict('b0')
    path = _save(tmp_path, sd)
    expected = convert_pvt_checkpoint(sd)
    model = MODELS.build(dict(type='PVTv2', arch='b0',
                              init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    model.init_weights()
    _assert_same(model.state_dict(), expected)
    with pytest.warns(DeprecationWarning):
        legacy = MODELS.build(dict(type='pvt_v2_b0', pretrained=str(path)))
    legacy.init_weights()
    _assert_same(legacy.state_dict(), expected)


def test_convert_tool(tmp_path):
    src = _save(tmp_path, pvt_convert(official_state_dict('tiny')), 'mmdet_tiny.pth')
    dst = tmp_path / 'out' / 'tiny.pth'
    proc = subprocess.run([sys.executable, str(ROOT / 'tools' / 'convert_checkpoint.py'),
                           str(src), str(dst), '--arch', 'tiny'], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert 'wrote' in proc.stdout
    build('tiny').load_state_dict(torch.load(dst, weights_only=True), strict=True)
    proc = subprocess.run([sys.executable, str(ROOT / 'tools' / 'convert_checkpoint.py'),
                           str(src), str(dst), '--arch', 'b0'], capture_output=True, text=True)
    assert proc.returncode != 0 and 'does not match PVTv2' in proc.stderr


def test_safetensors_written_with_the_same_mode_as_pth(tmp_path):
    state = {'w': torch.zeros(2)}
    modes = {suffix: stat.S_IMODE(write_checkpoint(state, tmp_path / f'x{suffix}').stat().st_mode)
             for suffix in ('.pth', '.safetensors')}
    umask = os.umask(0o22)
    os.umask(umask)
    assert modes['.safetensors'] == modes['.pth'] == 0o666 & ~umask
