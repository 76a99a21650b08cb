"""PVT v1 ImageNet classifiers in timm (pvt_mm.models.classifier): registry, strict loading of
official-layout checkpoints, logits against a plain-PyTorch transcription of the official
classification forward, features_only, reset_classifier, grad checkpointing, eval tool."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from helpers import official_state_dict
from PIL import Image

import pvt_mm  # noqa: F401  registers the models
from pvt_mm.models.backbones.pretrained import load_pretrained
from pvt_mm.loading.convert import CheckpointError
from pvt_mm.models.backbones import ARCHS, PVT
from pvt_mm.models.classifier import TIMM_NAMES, PVTClassifier, checkpoint_filter_fn

pytestmark = pytest.mark.fast  # `pytest -m fast`: the model-code subset

ROOT = Path(__file__).resolve().parents[1]
# Official ImageNet parameter counts (M, classification/README.md); huge has none published.
PUBLISHED_PARAMS = {'pvt_v1_tiny': 13.2, 'pvt_v1_small': 24.5, 'pvt_v1_medium': 44.2,
                    'pvt_v1_large': 61.4}
# fp32 logits of the same weights through different kernels (oneDNN fused linear/GELU,
# query-chunked softmax) differ by rounding only: ~1e-6 measured on logits of magnitude ~1;
# 1e-4 leaves room for other CPUs while any real mismatch (a missing pos slot, eps, norm)
# moves the logits by > 1e-2.
LOGITS_ATOL = 1e-4


# ---- the official v1 classification forward (whai362/PVT classification/pvt.py), as plain
# ---- tensor ops on an official state dict --------------------------------------------------
def _official_pos(pos: torch.Tensor, grid: int, hw: tuple[int, int], n_stage1: int
                  ) -> torch.Tensor:
    # official _get_pos_embed: unchanged when H*W equals stage 1's patch count, else bilinear
    if hw[0] * hw[1] == n_stage1:
        return pos
    pos = pos.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    return F.interpolate(pos, size=hw, mode='bilinear').reshape(1, -1, hw[0] * hw[1]
                                                                ).permute(0, 2, 1)


def official_forward(sd: dict, x: torch.Tensor, arch: str, img_size: int = 224) -> torch.Tensor:
    spec = ARCHS[arch]
    B = x.shape[0]
    n_stage1 = (img_size // 4) ** 2
    for i in range(4):
        s = i + 1
        w = sd[f'patch_embed{s}.proj.weight']
        x = F.conv2d(x, w, sd[f'patch_embed{s}.proj.bias'], stride=w.shape[-1])
        H, W = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        C = x.shape[-1]
        x = F.layer_norm(x, (C,), sd[f'patch_embed{s}.norm.weight'],
                         sd[f'patch_embed{s}.norm.bias'])  # eps 1e-5
        grid = img_size // 2 ** (i + 2)
        pos = sd[f'pos_embed{s}']
        if i == 3:
            x = torch.cat((sd['cls_token'].expand(B, -1, -1), x), dim=1)
            pos = torch.cat((pos[:, :1], _official_pos(pos[:, 1:], grid, (H, W), n_stage1)), 1)
        else:
            pos = _official_pos(pos, grid, (H, W), n_stage1)
        x = x + pos
        heads, sr = spec.num_heads[i], spec.sr_ratios[i]
        for j in range(spec.depths[i]):
            p = f'block{s}.{j}.'
            y = F.layer_norm(x, (C,), sd[p + 'norm1.weight'], sd[p + 'norm1.bias'], eps=1e-6)
            N = y.shape[1]
            q = F.linear(y, sd[p + 'attn.q.weight'], sd[p + 'attn.q.bias'])
            q = q.reshape(B, N, heads, C // heads).permute(0, 2, 1, 3)
            if sr > 1:
                y_ = y.permute(0, 2, 1).reshape(B, C, H, W)
                y_ = F.conv2d(y_, sd[p + 'attn.sr.weight'], sd[p + 'attn.sr.bias'], stride=sr)
                y_ = y_.reshape(B, C, -1).permute(0, 2, 1)
                y = F.layer_norm(y_, (C,), sd[p + 'attn.norm.weight'], sd[p + 'attn.norm.bias'])
            kv = F.linear(y, sd[p + 'attn.kv.weight'], sd[p + 'attn.kv.bias'])
            k, v = kv.reshape(B, -1, 2, heads, C // heads).permute(2, 0, 3, 1, 4)
            attn = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5).softmax(dim=-1)
            out = (attn @ v).transpose(1, 2).reshape(B, N, C)
            x = x + F.linear(out, sd[p + 'attn.proj.weight'], sd[p + 'attn.proj.bias'])
            y = F.layer_norm(x, (C,), sd[p + 'norm2.weight'], sd[p + 'norm2.bias'], eps=1e-6)
            y = F.gelu(F.linear(y, sd[p + 'mlp.fc1.weight'], sd[p + 'mlp.fc1.bias']))
            x = x + F.linear(y, sd[p + 'mlp.fc2.weight'], sd[p + 'mlp.fc2.bias'])
        if i != 3:
            x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2)
    x = F.layer_norm(x, (x.shape[-1],), sd['norm.weight'], sd['norm.bias'], eps=1e-6)
    return F.linear(x[:, 0], sd['head.weight'], sd['head.bias'])


@pytest.fixture(scope='module')
def tiny_file(tmp_path_factory) -> tuple[Path, dict]:
    sd = official_state_dict('tiny', seed=3)
    path = tmp_path_factory.mktemp('ckpt') / 'pvt_tiny.pth'
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope='module')
def tiny_model(tiny_file) -> PVTClassifier:
    return timm.create_model('pvt_v1_tiny', pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(tiny_file[0]))).eval()


# ---- tests ---------------------------------------------------------------------------------
def test_every_v1_classifier_is_registered_and_builds():
    assert set(timm.list_models('pvt_v1_*')) == set(TIMM_NAMES)
    for name, arch in TIMM_NAMES.items():
        with torch.device('meta'):  # counting needs no storage (huge: 305M parameters)
            model = timm.create_model(name)
        assert isinstance(model, PVTClassifier) and model.arch == ARCHS[arch]
        assert [len(s.blocks) for s in model.stages] == list(ARCHS[arch].depths)
        n = sum(p.numel() for p in model.parameters())
        if name in PUBLISHED_PARAMS:
            assert round(n / 1e6, 1) == PUBLISHED_PARAMS[name]
    huge = ARCHS['huge']
    assert (huge.depths, huge.embed_dims, huge.num_heads, huge.mlp_ratios, huge.sr_ratios) == (
        (3, 10, 60, 3), (128, 256, 512, 768), (2, 4, 8, 12), (8, 8, 4, 4), (8, 4, 2, 1))
    cfg = timm.create_model('pvt_v1_small', pretrained=False).pretrained_cfg
    assert cfg['input_size'] == (3, 224, 224) and cfg['interpolation'] == 'bicubic'
    assert cfg['mean'] == (0.485, 0.456, 0.406) and cfg['std'] == (0.229, 0.224, 0.225)
    assert cfg['crop_pct'] == 0.875  # the official (DeiT) evaluation: resize 256, crop 224


@pytest.mark.parametrize('size', [(224, 224), (128, 160)])
def test_official_checkpoint_gives_the_official_logits(tiny_file, tiny_model, size):
    path, sd = tiny_file
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours = tiny_model(x)
        ref = official_forward(sd, x, 'tiny')
    assert ours.shape == (2, 1000)
    assert ref.abs().max() > 0.1  # the logits are not trivially small
    assert (ours - ref).abs().max().item() <= LOGITS_ATOL
    # the same weights in the PVT module's grad (autograd) path
    ours_grad = tiny_model(x)
    assert (ours_grad.detach() - ref).abs().max().item() <= LOGITS_ATOL


def test_same_file_loads_into_the_detection_backbone(tiny_file, tiny_model):
    path, _ = tiny_file
    backbone = PVT(arch='tiny', drop_path_rate=0.).eval()
    load_pretrained(backbone, path)
    x = torch.randn(1, 3, 96, 128)
    features = timm.create_model('pvt_v1_tiny', features_only=True, out_indices=(0, 1, 2),
                                 pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path))).eval()
    with torch.no_grad():
        for a, b in zip(backbone(x)[:3], features(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_classifier_checkpoint_loads_into_the_detection_backbone(tiny_model, tmp_path):
    path = tmp_path / 'classifier.pth'
    torch.save(tiny_model.state_dict(), path)
    backbone = PVT(arch='tiny')
    load_pretrained(backbone, path)  # cls_token, cls_pos_embed, norm, head are dropped
    torch.testing.assert_close(backbone.stages[3].pos_embed, tiny_model.stages[3].pos_embed)


def test_loading_is_strict(tiny_file, tmp_path):
    _, sd = tiny_file
    missing = {k: v for k, v in sd.items() if k != 'cls_token'}
    torch.save(missing, tmp_path / 'missing.pth')
    with pytest.raises(RuntimeError, match='cls_token'):
        timm.create_model('pvt_v1_tiny', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / 'missing.pth')))
    extra = dict(sd, **{'block1.0.attn.unknown.weight': torch.zeros(1)})
    torch.save(extra, tmp_path / 'extra.pth')
    with pytest.raises(CheckpointError, match='unknown'):
        timm.create_model('pvt_v1_tiny', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / 'extra.pth')))
    wrong = dict(sd, **{'pos_embed4': torch.zeros(1, 50, 320)})  # another variant's width
    torch.save(wrong, tmp_path / 'wrong.pth')
    with pytest.raises(RuntimeError, match='size mismatch'):
        timm.create_model('pvt_v1_tiny', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / 'wrong.pth')))


def test_features_only_shapes_and_channels():
    model = timm.create_model('pvt_v1_tiny', features_only=True).eval()
    assert model.feature_info.channels() == [64, 128, 320, 512]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 128, 192))
    assert [tuple(o.shape) for o in outs] == [(2, 64, 32, 48), (2, 128, 16, 24),
                                               (2, 320, 8, 12), (2, 512, 4, 6)]
    two = timm.create_model('pvt_v1_tiny', features_only=True, out_indices=(1, 2))
    assert two.feature_info.channels() == [128, 320]
    assert len(two.model.stages) == 3  # the stages after the last output are pruned


def test_heads_pooling_and_reset_classifier(tiny_model):
    model = timm.create_model('pvt_v1_tiny', num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
        tokens = model.forward_features(x)
        assert tokens.shape == (2, 1 + 2 * 2, 512)
        pre = model.forward_head(tokens, pre_logits=True)
        torch.testing.assert_close(pre, tokens[:, 0])
        torch.testing.assert_close(model.forward_head(tokens), model.head(pre))
        model.reset_classifier(3)
        assert model.get_classifier().out_features == 3 and model(x).shape == (2, 3)
        model.reset_classifier(0, global_pool='avg')
        torch.testing.assert_close(model(x), tokens[:, 1:].mean(1))
    with pytest.raises(ValueError, match='global_pool'):
        model.reset_classifier(0, global_pool='max')


def test_grad_checkpointing_gives_the_same_gradients():
    model = timm.create_model('pvt_v1_tiny', num_classes=4).train()
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        model(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(s.with_cp for s in model.stages) and model.grad_checkpointing
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_eval_imagenet_tool_on_a_tiny_folder(tiny_file, tmp_path):
    """tools/eval_imagenet.py (timm's data pipeline) on 2 classes x 2 images, with a 2-class
    head set by hand to separate the classes' features: it must report 100 % top-1, which
    needs the folder labels, the preprocessing and the checkpoint's head all wired right."""
    _, sd = tiny_file
    colours = {'n01': [(200, 30, 30), (220, 60, 10)], 'n02': [(20, 40, 210), (10, 90, 200)]}
    images, labels = [], []
    for label, (cls, rgbs) in enumerate(sorted(colours.items())):
        (tmp_path / 'val' / cls).mkdir(parents=True)
        for k, rgb in enumerate(rgbs):
            img = Image.new('RGB', (64, 64), rgb)
            img.save(tmp_path / 'val' / cls / f'{k}.png')
            images.append(img)
            labels.append(label)
    model = PVTClassifier('tiny').eval()
    model.load_state_dict(checkpoint_filter_fn(sd))
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(
            torch.stack([transform(img) for img in images])), pre_logits=True)
    f0, f1 = feats[:2].mean(0), feats[2:].mean(0)
    w, mid = f0 - f1, (f0 + f1) / 2
    head_w, head_b = torch.stack([w, -w]), torch.stack([-(w @ mid), w @ mid])
    assert ((feats @ head_w.T + head_b).argmax(1) == torch.tensor(labels)).all()  # the setup
    ckpt = tmp_path / 'two_classes.pth'
    torch.save(dict(sd, **{'head.weight': head_w, 'head.bias': head_b}), ckpt)
    out = subprocess.run(
        [sys.executable, str(ROOT / 'tools/eval_imagenet.py'), str(tmp_path / 'val'),
         '--model', 'pvt_v1_tiny', '--checkpoint', str(ckpt), '--num-classes', '2',
         '--batch-size', '3', '--workers', '0'],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'images 4  top1 100.00  top5 100.00' in out.stdout, out.stdout
