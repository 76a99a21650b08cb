"""Hugging Face transformers' PVT checkpoints and folders (issue 19): strict loads into PVT /
PVTv2 and timm's classifier, parity with transformers' own modules (at the official norm eps),
the reverse conversion to a folder transformers loads, and the variant check of config.json.

The checkpoints are made here by transformers' own classes (random weights: every parameter,
norms included, is drawn, so a swapped or misplaced tensor changes the maps).
"""
from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
import transformers
from helpers import max_abs_diff, official_state_dict
from torch import Tensor, nn
from transformers.initialization import no_init_weights
from transformers.models.pvt import modeling_pvt
from transformers.models.pvt_v2 import modeling_pvt_v2

from pvt_mm.loading.checkpoint import read_checkpoint
from pvt_mm.loading.convert import CheckpointError, convert_pvt_checkpoint
from pvt_mm.loading.convert_hf import classifier_parts, to_transformers
from pvt_mm.loading.hf_folder import folder_weights
from pvt_mm.models.backbones import ARCHS, build_pvt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
import convert_checkpoint  # noqa: E402  tools/convert_checkpoint.py

OFFICIAL_EPS = 1e-5  # official patch-embedding and spatial-reduction norms (transformers: 1e-6)
B2 = dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3])
# variant -> (transformers class, config settings); PvtConfig's defaults are PVT-tiny's
HF_MODELS = {'tiny': ('PvtForImageClassification', dict(num_labels=1000)),
             'b0': ('PvtV2ForImageClassification', dict(num_labels=10)),
             'b2': ('PvtV2Model', B2),
             'b2_li': ('PvtV2Backbone', dict(B2, linear_attention=True))}
SIZES = {1: (224, 224), 2: (96, 128)}  # transformers' v1 embeds positions at its image_size only


def _random_transformers_model(arch: str, seed: int) -> nn.Module:
    name, settings = HF_MODELS[arch]
    config_cls = transformers.PvtConfig if ARCHS[arch].version == 1 else transformers.PvtV2Config
    with no_init_weights():  # every parameter is drawn below
        model = getattr(transformers, name)(config_cls(**settings))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if p.dim() == 1:  # norm scales around 1, biases around 0
                p.copy_(float(key.endswith('weight') and 'norm' in key)
                        + 0.1 * torch.randn(p.shape, generator=g))
            elif 'position_embeddings' in key or 'cls_token' in key:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    return model.eval()


@pytest.fixture(scope='module')
def hf(tmp_path_factory) -> dict[str, tuple[Path, nn.Module]]:
    """Per variant: a save_pretrained folder and the transformers model it holds."""
    out = {}
    for seed, arch in enumerate(HF_MODELS):
        model = _random_transformers_model(arch, seed)
        folder = tmp_path_factory.mktemp(f'hf_{arch}')
        model.save_pretrained(folder)
        out[arch] = folder, model
    return out


@contextlib.contextmanager
def official_eps(model: nn.Module) -> Iterator[None]:
    """Set transformers' patch-embedding and spatial-reduction norms to the official eps."""
    embeds = (modeling_pvt.PvtPatchEmbeddings, modeling_pvt_v2.PvtV2OverlapPatchEmbeddings)
    attns = (modeling_pvt.PvtEfficientSelfAttention, modeling_pvt_v2.PvtV2SelfAttention)
    norms = [m.layer_norm for m in model.modules()
             if isinstance(m, embeds) or (isinstance(m, attns) and hasattr(m, 'layer_norm'))]
    before = [n.eps for n in norms]
    for n in norms:
        n.eps = OFFICIAL_EPS
    try:
        yield
    finally:
        for n, eps in zip(norms, before):
            n.eps = eps


def reference_maps(model: nn.Module, x: Tensor) -> tuple[Tensor, ...]:
    """The four stage maps from transformers' modules. v1: stage 4 without the cls token (the
    detection backbone's stage 4: transformers' patch embedding, grid positions, blocks)."""
    encoder = model.base_model.encoder
    if not hasattr(encoder, 'patch_embeddings'):  # v2
        return encoder(x, output_hidden_states=True).hidden_states
    maps = []
    for embed, blocks in zip(encoder.patch_embeddings, encoder.block):
        if embed.cls_token is None:
            tokens, h, w = embed(x)
        else:
            proj = embed.projection(x)
            h, w = proj.shape[-2:]
            tokens = (embed.layer_norm(proj.flatten(2).transpose(1, 2))
                      + embed.position_embeddings[:, 1:])
        for block in blocks:
            tokens = block(tokens, h, w)[0]
        x = tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        maps.append(x)
    return tuple(maps)


def _backbone(arch: str, checkpoint: str | Path) -> nn.Module:
    model = build_pvt(arch, init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint)))
    model.init_weights()
    return model.eval()


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---- transformers -> pvt_mm ----------------------------------------------------------------
@pytest.mark.parametrize('arch', list(HF_MODELS))
def test_folder_and_file_load_strictly_and_match_transformers(arch, hf):
    folder, model = hf[arch]
    ours = _backbone(arch, folder)
    _assert_same(ours.state_dict(), _backbone(arch, folder / 'model.safetensors').state_dict())
    x = torch.randn(1, 3, *SIZES[ARCHS[arch].version])
    with torch.no_grad(), official_eps(model):
        expected = reference_maps(model, x)
        got = ours(x)
    assert [m.shape for m in got] == [m.shape for m in expected]
    assert max_abs_diff(got, expected) < 1e-4


def test_pytorch_model_bin_folder_and_prefix_free_state_dicts(hf, tmp_path):
    folder, model = hf['b0']
    sd = model.state_dict()  # PvtV2ForImageClassification: pvt_v2.* keys and a classifier
    (tmp_path / 'config.json').write_bytes((folder / 'config.json').read_bytes())
    torch.save(sd, tmp_path / 'pytorch_model.bin')
    _assert_same(_backbone('b0', tmp_path).state_dict(), _backbone('b0', folder).state_dict())
    bare = {k.removeprefix('pvt_v2.'): v for k, v in sd.items()}  # PvtV2Model's keys
    _assert_same(convert_pvt_checkpoint(bare), convert_pvt_checkpoint(sd))


def test_unknown_and_missing_keys_are_named_and_conversion_is_pure(hf):
    sd = hf['b0'][1].state_dict()
    snapshot = {k: v.clone() for k, v in sd.items()}
    converted = convert_pvt_checkpoint(sd)
    _assert_same(sd, snapshot)
    _assert_same(convert_pvt_checkpoint(converted), converted)  # idempotent
    bogus = 'pvt_v2.encoder.layers.0.blocks.0.attention.bogus.weight'
    with pytest.raises(CheckpointError, match=rf'1 unknown key\(s\): {bogus}'):
        convert_pvt_checkpoint({**sd, bogus: torch.zeros(1)})
    gone = ['pvt_v2.encoder.layers.1.blocks.0.attention.key.weight',
            'pvt_v2.encoder.layers.3.layer_norm.bias',
            'pvt_v2.encoder.layers.2.blocks.0.mlp.dwconv.dwconv.weight']
    with pytest.raises(CheckpointError, match=r'3 missing key\(s\)') as err:
        convert_pvt_checkpoint({k: v for k, v in sd.items() if k not in gone})
    assert all(k.removeprefix('pvt_v2.') in str(err.value) for k in gone)
    block = 'pvt_v2.encoder.layers.2.blocks.0.'  # a whole block before the stage's last one
    with pytest.raises(CheckpointError, match=r'missing key\(s\): encoder\.layers\.2\.blocks\.0'):
        convert_pvt_checkpoint({k: v for k, v in sd.items() if not k.startswith(block)})
    with pytest.raises(CheckpointError, match=r'unknown key\(s\): stages\.0\.patch_embed'):
        convert_pvt_checkpoint({**sd, 'stages.0.patch_embed.proj.bias': torch.zeros(32)})


def test_wrong_variant_folder_is_refused_before_any_tensor(hf, tmp_path):
    fake = tmp_path / 'b0_config'
    fake.mkdir()
    (fake / 'config.json').write_bytes((hf['b0'][0] / 'config.json').read_bytes())
    (fake / 'model.safetensors').write_bytes(b'')  # unreadable: the variant error comes first
    with pytest.raises(CheckpointError, match=r'holds PVTv2 b0 weights .* PVTv2 \(b1\)'):
        _backbone('b1', fake)
    with pytest.raises(CheckpointError, match=r'holds PVT tiny weights .* PVTv2 \(b1\)'):
        _backbone('b1', hf['tiny'][0])
    # the heads are not in any tensor's shape: only config.json tells b2 from these settings
    heads = tmp_path / 'b2_heads'
    heads.mkdir()
    config = json.loads((hf['b2'][0] / 'config.json').read_text())
    (heads / 'config.json').write_text(json.dumps({**config, 'num_attention_heads': [2, 4, 8, 16]}))
    (heads / 'model.safetensors').symlink_to(hf['b2'][0] / 'model.safetensors')
    with pytest.raises(CheckpointError, match=r'PVTv2 custom \(.*heads \[2, 4, 8, 16\].*\(b2\)'):
        _backbone('b2', heads)
    with pytest.raises(CheckpointError, match=r'PVT tiny weights .* pvt_v1_small'):
        timm.create_model('pvt_v1_small', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(hf['tiny'][0])))
    with pytest.raises(CheckpointError, match=r'PVTv2 b0 weights .* --arch b1'):
        convert_checkpoint.main([str(hf['b0'][0]), str(tmp_path / 'out.pth'), '--arch', 'b1'])


def test_folder_without_weights_says_so(tmp_path):
    (tmp_path / 'preprocessor_config.json').write_text('{}')
    with pytest.raises(CheckpointError) as err:
        _backbone('b0', tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and 'model.safetensors or pytorch_model.bin' in message
    assert 'preprocessor_config.json' in message and 'hub cache' not in message


# ---- pvt_mm -> transformers ----------------------------------------------------------------
def test_round_trip_is_exact_and_gives_transformers_own_layout(hf):
    for arch, (folder, model) in hf.items():
        hf_sd = read_checkpoint(folder_weights(folder))
        ours = convert_pvt_checkpoint(hf_sd)
        back, config, notes = to_transformers(ours, ARCHS[arch], classifier_parts(hf_sd))
        _assert_same(back, model.state_dict())
        _assert_same(convert_pvt_checkpoint(back), ours)
        assert config['architectures'] == [type(model).__name__.replace('Backbone', 'Model')]
        assert not notes
    _, _, notes = to_transformers(convert_pvt_checkpoint(hf['tiny'][1].state_dict()),
                                  ARCHS['tiny'])  # a v1 backbone without cls token / norm
    assert notes and 'cls_token' in notes[0]


def test_convert_tool_writes_folders_transformers_loads(hf, tmp_path):
    folder, model = hf['b0']
    backbone_only = tmp_path / 'b0.safetensors'  # a pvt_mm checkpoint: no classifier head
    convert_checkpoint.main([str(folder), str(backbone_only), '--arch', 'b0'])
    _assert_same(read_checkpoint(backbone_only), convert_pvt_checkpoint(model.state_dict()))
    for src, model_cls in ((backbone_only, transformers.PvtV2Model),
                           (folder, transformers.PvtV2ForImageClassification)):
        out = tmp_path / f'{src.name}_hf'
        convert_checkpoint.main(['--to', 'transformers', str(src), str(out)])
        loaded, info = model_cls.from_pretrained(out, output_loading_info=True)
        assert not any(info[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys'))
        expected = model.state_dict()
        if model_cls is transformers.PvtV2Model:  # no head; keys without the pvt_v2. prefix
            expected = {k.removeprefix('pvt_v2.'): v for k, v in expected.items()
                        if not k.startswith('classifier.')}
        _assert_same(loaded.state_dict(), expected)
    # v1: an official classification checkpoint -> PvtForImageClassification, whose logits
    # (official eps) equal timm's pvt_v1_tiny on the same file and on the written folder
    official = tmp_path / 'pvt_tiny.pth'
    torch.save(official_state_dict('tiny', seed=5), official)
    convert_checkpoint.main(['--to', 'transformers', str(official), str(tmp_path / 'tiny_hf')])
    loaded, info = transformers.PvtForImageClassification.from_pretrained(
        tmp_path / 'tiny_hf', output_loading_info=True)
    assert not any(info[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys'))
    timm_file, timm_folder = (timm.create_model('pvt_v1_tiny', pretrained=True,
                                                pretrained_cfg_overlay=dict(file=str(f))).eval()
                              for f in (official, tmp_path / 'tiny_hf'))
    _assert_same(timm_file.state_dict(), timm_folder.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad(), official_eps(loaded.eval()):
        assert (loaded(x).logits - timm_folder(x)).abs().max() < 1e-4
