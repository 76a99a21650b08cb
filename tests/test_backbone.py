"""Behaviour of the PVT / PVTv2 backbones: shapes, options, gradients, errors."""
from __future__ import annotations

import pytest
import torch
from helpers import build, random_loss

from pvt_mm.models.backbones import ARCHS, PVT, PVTv2

pytestmark = pytest.mark.fast  # `pytest -m fast`: the model-code subset

V1, V2 = 'tiny', 'b0'


def _v1_sizes(h: int, w: int) -> list[tuple[int, int]]:
    out, (h, w) = [], (h // 4, w // 4)
    for _ in range(4):
        out.append((h, w))
        h, w = h // 2, w // 2
    return out


def _v2_sizes(h: int, w: int) -> list[tuple[int, int]]:
    out, (h, w) = [], (-(-h // 4), -(-w // 4))
    for _ in range(4):
        out.append((h, w))
        h, w = -(-h // 2), -(-w // 2)
    return out


@pytest.mark.parametrize('arch', [V1, V2, 'b2_li'])
@pytest.mark.parametrize('size', [(32, 32), (33, 33), (112, 137), (800, 1333)])
def test_output_shapes(arch, size):
    model = build(arch).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    sizes = (_v1_sizes if ARCHS[arch].version == 1 else _v2_sizes)(*size)
    assert [tuple(o.shape[-2:]) for o in outs] == sizes
    assert [o.shape[1] for o in outs] == list(ARCHS[arch].embed_dims)
    assert all(o.is_contiguous() for o in outs)


def test_known_sizes():
    # strides 4/8/16/32 at 800x1333: v1 floors, v2 ceils
    assert _v1_sizes(800, 1333)[-1] == (25, 41)
    assert _v2_sizes(800, 1333)[-1] == (25, 42)


def test_channels_b0_vs_others():
    assert build('b0').out_channels == (32, 64, 160, 256)
    assert build('b1').out_channels == (64, 128, 320, 512)


@pytest.mark.parametrize('arch', [V1, V2, 'b2_li'])
def test_every_parameter_gets_a_gradient(arch):
    model = build(arch, drop_path_rate=0.).train()
    outs = model(torch.randn(2, 3, 64, 96))
    random_loss(outs).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not no_grad


@pytest.mark.parametrize('arch', [V1, V2, 'b2_li'])
@pytest.mark.parametrize('drop', [0., 0.1])
def test_with_cp_same_outputs_and_gradients(arch, drop):
    """Recomputation replays dropout / attention dropout / drop-path masks exactly."""
    torch.manual_seed(1)
    kw = dict(drop_rate=drop, attn_drop_rate=drop, drop_path_rate=2 * drop)
    ref = build(arch, **kw).train()
    cp = build(arch, with_cp=True, **kw).train()
    cp.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    outs, grads = [], []
    for model in (ref, cp):
        torch.manual_seed(2)
        outs.append(model(x))
        random_loss(outs[-1]).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-6, atol=1e-7)
    assert cp.with_cp and not ref.with_cp


@pytest.mark.parametrize('arch', [V1, V2])
def test_with_cp_keeps_only_segment_inputs(arch):
    """with_cp saves for backward only the input of each stage's patch embedding and of each
    of its blocks (plus the image): no attention, MLP, norm or embedding intermediates."""
    x = torch.randn(2, 3, 64, 96)
    saved = {}
    for with_cp in (False, True):
        model = build(arch, with_cp=with_cp).train()
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
        saved[with_cp] = sum(storages.values())
    H, W = x.shape[2:]
    bound = x.numel() * 4
    for i, (dim, depth) in enumerate(zip(model.arch.embed_dims, model.arch.depths)):
        tokens = (H // 2 ** (i + 2)) * (W // 2 ** (i + 2))
        bound += (depth + 1) * x.shape[0] * tokens * dim * 4  # block inputs and stage output
    assert saved[True] <= bound, (saved[True], bound)
    assert saved[True] < 0.3 * saved[False]


@pytest.mark.parametrize('frozen', [1, 2, 4])
@pytest.mark.parametrize('with_cp', [False, True])
def test_frozen_stages_stay_frozen(frozen, with_cp):
    model = build(V2, frozen_stages=frozen, drop_path_rate=0., with_cp=with_cp)
    model.train()
    for i, stage in enumerate(model.stages):
        is_frozen = i < frozen
        assert all(p.requires_grad != is_frozen for p in stage.parameters())
        assert all(m.training != is_frozen for m in stage.modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if trainable:
        opt = torch.optim.SGD(trainable, lr=0.1)
        random_loss(model(torch.randn(1, 3, 64, 64))).backward()
        opt.step()
    after = model.state_dict()
    for key in before:
        stage = int(key.split('.')[1])
        assert torch.equal(before[key], after[key]) == (stage < frozen), key


def test_frozen_stages_none_and_bounds():
    model = build(V1, frozen_stages=-1).train()
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match='frozen_stages'):
        build(V1, frozen_stages=5)


@pytest.mark.parametrize('arch', [V1, V2, 'b2_li'])
def test_sdpa_and_explicit_attention_agree(arch):
    """F.scaled_dot_product_attention vs the explicit softmax path (the CPU inference fast
    path is switched off here; tests/test_fast_path.py compares it with the reference)."""
    model = build(arch, drop_path_rate=0., fast_kernels=False).eval()
    x = torch.randn(2, 3, 96, 130)
    with torch.no_grad():
        fast = model(x)
        model.attn_mode = 'explicit'
        ref = model(x)
    assert model.attn_mode == 'explicit'
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='attn_mode'):
        model.attn_mode = 'flash'


def test_sdpa_and_explicit_gradients_agree():
    model = build(V2, drop_path_rate=0.).train()
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for mode in ('sdpa', 'explicit'):
        model.zero_grad()
        model.attn_mode = mode
        random_loss(model(x)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):  # relative to each gradient's scale (sums over many positions)
        assert (a - b).abs().max() <= 1e-4 * a.abs().max()


def test_out_indices_and_F4():
    model = build(V1).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = model(x)
        model_sub = build(V1, out_indices=(1, -1)).eval()
        model_sub.load_state_dict(model.state_dict())
        sub = model_sub(x)
        f4 = build(V1, F4=True).eval()
        f4.load_state_dict(model.state_dict())
        last = f4(x)
    assert len(full) == 4 and len(sub) == 2 and len(last) == 1
    torch.testing.assert_close(sub, (full[1], full[3]), rtol=0, atol=0)
    torch.testing.assert_close(last[0], full[3], rtol=0, atol=0)
    assert model_sub.out_channels == (128, 512) and f4.out_channels == (512,)
    for bad in [(0, 4), (), (1, 1), (-5,)]:
        with pytest.raises(ValueError, match='out_indices'):
            build(V1, out_indices=bad)
    with pytest.raises(ValueError, match='F4'):
        build(V1, F4=True, out_indices=(0, 1))


def test_reset_drop_path_spreads_linearly():
    model = build('small', drop_path_rate=0.)
    rates = lambda: [b.drop_path.drop_prob for s in model.stages for b in s.blocks]  # noqa: E731
    assert rates() == [0.] * 16
    model.reset_drop_path(0.3)
    expected = torch.linspace(0, 0.3, 16).tolist()
    assert rates() == pytest.approx(expected)
    assert rates()[0] == 0 and rates()[-1] == pytest.approx(0.3)
    model.reset_drop_path(0.)
    assert rates() == [0.] * 16
    with pytest.raises(ValueError, match='drop_path_rate'):
        model.reset_drop_path(1.5)


def test_drop_path_is_active_in_training_only():
    model = build(V2, drop_path_rate=0.5)
    x = torch.randn(4, 3, 64, 64)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a[-1], b[-1])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize('bad, error, match', [
    (torch.randn(3, 64, 64), ValueError, r'\(B, C, H, W\)'),
    (torch.randn(1, 1, 64, 64), ValueError, '3 input channels, got 1'),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, 'floating-point'),
    (torch.randn(1, 3, 28, 64), ValueError, 'too small'),  # v2 runs from 29 px, v1 from 32
    (torch.randn(1, 3, 64, 16), ValueError, 'H and W must be at least'),
    ([[1.0]], TypeError, 'tensor'),
])
@pytest.mark.parametrize('arch', [V1, V2])
def test_bad_inputs_raise_clear_errors(arch, bad, error, match):
    with pytest.raises(error, match=match):
        build(arch)(bad)


def test_in_channels_option():
    model = build(V2, in_channels=1).eval()
    with torch.no_grad():
        assert len(model(torch.randn(1, 1, 32, 32))) == 4


@pytest.mark.parametrize('cls, arch, match', [
    (PVT, 'b2', 'unknown PVT arch'),
    (PVTv2, 'small', 'unknown PVTv2 arch'),
    (PVT, 'smal', "choose one of \\[.*'large', 'medium', 'small', 'tiny'\\]"),
    (PVTv2, dict(embed_dims=(64, 128, 320, 512)), 'missing'),
    (PVTv2, dict(embed_dims=(64, 128), depths=(1, 1)), '4 values'),
    (PVTv2, dict(embed_dims=(64, 128, 320, 512), depths=(1, 1, 1, 1), heads=(1, 2, 5, 8)),
     'unknown arch settings'),
    (PVTv2, dict(embed_dims=(64, 128, 320, 500), depths=(1, 1, 1, 1)), 'divisible'),
    (PVT, dict(embed_dims=(64, 128, 320, 512), depths=(1, 1, 1, 1), linear=True), 'only in PVTv2'),
])
def test_bad_arch_raises(cls, arch, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cls(arch=arch)


def test_custom_arch_dict():
    model = PVTv2(arch=dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1),
                            num_heads=(1, 2, 3, 4))).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [16, 32, 48, 64]


# Published ImageNet parameter counts (M, with the 1000-class head): the backbone plus head,
# cls_token and final norm (v1) must round to them; the exact backbone figures too.
PUBLISHED_WITH_HEAD = {'tiny': 13.2, 'small': 24.5, 'medium': 44.2, 'large': 61.4,
                       'b0': 3.7, 'b1': 14.0, 'b2': 25.4, 'b2_li': 22.6, 'b3': 45.2,
                       'b4': 62.6, 'b5': 82.0}
BACKBONE_EXACT = {'small': 23.97, 'b2': 24.85, 'b2_li': 22.04}


@pytest.mark.parametrize('arch', sorted(PUBLISHED_WITH_HEAD))  # huge: none published
def test_parameter_count_matches_published(arch):
    with torch.device('meta'):  # counting needs no storage
        model = build(arch)
    n = sum(p.numel() for p in model.parameters())
    c4 = ARCHS[arch].embed_dims[-1]
    extra = c4 * 1000 + 1000 + (c4 + 2 * c4 if ARCHS[arch].version == 1 else 0)
    assert round((n + extra) / 1e6, 1) == pytest.approx(PUBLISHED_WITH_HEAD[arch])
    if arch in BACKBONE_EXACT:
        assert round(n / 1e6, 2) == BACKBONE_EXACT[arch]
