"""The inference fast path (fused oneDNN kernels, row-banded MLP, SDPA) against the reference
path (plain ops, explicit softmax attention, whole maps), in fp32 and under bf16 autocast."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import build

import pvt_mm.models.backbones.pvt as pvt_module
import pvt_mm.models.fast.attention as attn_module
import pvt_mm.models.fast.bands as bands_module
import pvt_mm.models.fast.runner as runner_module
from pvt_mm.models.backbones import ARCHS
from pvt_mm.models.fast import native
from pvt_mm.models.fast.attention import fold_is_cheaper
from pvt_mm.models.fast.exec_path import (REFERENCE, TRACED, ExecKind, ExecPath,
                                          decide_exec_path)
from pvt_mm.models.fast.fused import BF16_AVAILABLE, FUSED_AVAILABLE, OneDNNKernels
from pvt_mm.models.fast.mlp import mlp_forward
from pvt_mm.models.layers import Mlp, SpatialReductionAttention

pytestmark = pytest.mark.fast  # `pytest -m fast`: the model-code subset

FP32_TOL = 1e-4
BF16_MIN_COSINE = 0.999  # per stage output, bf16 autocast vs fp32 reference (documented)


def reference(model, x):
    """Plain ops, explicit attention, whole-map MLP."""
    mode = model.attn_mode
    model.fast_kernels = False
    model.attn_mode = 'explicit'
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.fast_kernels = True
        model.attn_mode = mode


def test_fused_kernels_available_on_this_build():
    assert FUSED_AVAILABLE


# huge (305M parameters) runs large's kernels at other widths; building it costs more than
# the whole check of the others
@pytest.mark.parametrize('arch', sorted(set(ARCHS) - {'huge'}))
def test_fast_path_matches_reference_fp32_and_bf16(arch):
    model = build(arch).eval()
    x = torch.randn(1, 3, 64, 96)
    ref = reference(model, x)
    with torch.no_grad():
        fast = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            half = model(x)
    torch.testing.assert_close(fast, ref, rtol=FP32_TOL, atol=FP32_TOL)
    for h, r in zip(half, ref):
        cos = F.cosine_similarity(h.float().flatten(), r.flatten(), dim=0).item()
        assert cos >= BF16_MIN_COSINE, f'{arch}: stage cosine {cos:.5f}'


@pytest.mark.parametrize('kernel', ['native', 'chunks'])
@pytest.mark.parametrize('fold', [True, False])
@pytest.mark.parametrize('arch', ['tiny', 'b0', 'b2_li'])
def test_row_bands_with_halo_match_whole_maps(arch, fold, kernel, monkeypatch):
    """Force several bands per MLP (down to one row each) so band edges and the depthwise
    conv's halo rows are exercised, and several query chunks per attention (down to one
    query each), with ``q`` / ``proj`` folded into the keys and values in every stage and in
    none (at test sizes the cost rule would fold everywhere); results equal the whole-map
    reference computation. Attention through the native tile kernel (tiles of 16 queries)
    and through the oneDNN matmul chunks it replaces where it is not built."""
    if kernel == 'chunks':
        monkeypatch.setattr(native, '_loaded', 'not built (test)')
    monkeypatch.setattr(attn_module, 'TILE_SCORE_BYTES', 1)
    monkeypatch.setattr(attn_module, 'fold_is_cheaper', lambda attn, m: fold)
    model = build(arch).eval()
    x = torch.randn(2, 3, 96, 136)
    ref = reference(model, x)
    for band_bytes in (1, 2 * 34 * 256 * 4 * 3):  # 1 row; 3 rows of stage 1 (B=2, W=34)
        monkeypatch.setattr(bands_module, 'INFER_BAND_BYTES', band_bytes)
        # and attention over chunks of 1 and of 100 queries
        monkeypatch.setattr(attn_module, 'INFER_SCORE_BYTES', 1 if band_bytes == 1 else 100 * 4)
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref, rtol=FP32_TOL, atol=FP32_TOL)


def test_fold_is_taken_where_it_costs_fewer_flops():
    """At 800x1333 (1025 keys after the spatial reduction, 49 for li) the fold is cheaper
    for one head and for li's 49 keys, dearer for PVT's multi-head stages."""
    assert fold_is_cheaper(SpatialReductionAttention(64, 1, sr_ratio=8), 1025)
    assert not fold_is_cheaper(SpatialReductionAttention(128, 2, sr_ratio=4), 1025)
    assert not fold_is_cheaper(SpatialReductionAttention(512, 8, sr_ratio=1), 1025)
    for dim, heads in ((64, 1), (128, 2), (320, 5), (512, 8)):
        assert fold_is_cheaper(SpatialReductionAttention(dim, heads, linear=True), 49)


@pytest.mark.parametrize('arch', ['small', 'b2_li'])
def test_folded_attention_never_projects_the_tokens(arch, monkeypatch):
    """Where the fold is taken, inference computes neither ``q(x)`` nor ``proj`` of the tokens
    (the point of the fold), in fp32 and bf16, and still matches the reference."""
    model = build(arch).eval()
    x = torch.randn(1, 3, 64, 96)
    ref = reference(model, x)
    folded = {layer for m in model.modules() if isinstance(m, SpatialReductionAttention)
              and (m.num_heads == 1 or m.pool is not None) for layer in (m.q, m.proj)}
    assert folded
    called = []
    linear = OneDNNKernels.linear
    monkeypatch.setattr(OneDNNKernels, 'linear',
                        lambda self, t, layer, act='none': called.append(layer) or
                        linear(self, t, layer, act))
    with torch.no_grad():
        fast = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            model(x)
    assert called and not folded & set(called)
    torch.testing.assert_close(fast, ref, rtol=FP32_TOL, atol=FP32_TOL)


def test_training_takes_the_autograd_path():
    """With gradients enabled the plain ops run (the fused kernels have no backward)."""
    model = build('b0', drop_path_rate=0.).train()
    outs = model(torch.randn(1, 3, 64, 64))
    assert all(o.requires_grad for o in outs)
    assert outs[0].grad_fn is not None


def _train_grads(model, x, fused):
    """Outputs and gradients (parameters and input) of one backward of a random loss."""
    from helpers import random_loss
    model.fast_kernels = fused
    try:
        model.zero_grad()
        x = x.clone().requires_grad_()
        outs = model(x)
        random_loss(outs).backward()
    finally:
        model.fast_kernels = True
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    grads['input'] = x.grad
    return outs, grads


@pytest.mark.parametrize('arch', ['tiny', 'b0'])
@pytest.mark.parametrize('band_bytes', [None, 1, 3 * 34 * 4 * 512])
def test_training_fast_path_matches_plain_gradients(arch, band_bytes, monkeypatch):
    """Training on the CPU fast path (oneDNN linears, the banded MLP whose backward recomputes
    each band: mlp_grad.py) gives the plain path's outputs and gradients in fp32, with one band
    per MLP, one row per band, and several rows per band (3 rows of tiny's 34-wide stage 1 in
    the per-image backward)."""
    if band_bytes is not None:
        monkeypatch.setattr(bands_module, 'INFER_BAND_BYTES', band_bytes)
    model = build(arch, drop_path_rate=0.).train()
    x = torch.randn(2, 3, 96, 136)
    (fast, g_fast), (ref, g_ref) = (_train_grads(model, x, f) for f in (True, False))
    torch.testing.assert_close(fast, ref, rtol=FP32_TOL, atol=FP32_TOL)
    for name in g_ref:  # relative to each gradient's scale
        err = (g_fast[name] - g_ref[name]).abs().max()
        assert err <= FP32_TOL * g_ref[name].abs().max() + 1e-8, name


def test_training_fast_path_li_gradients():
    """PVTv2-li: fc1 -> ReLU -> dwconv. The recomputed pre-activation can differ from the plain
    path's in the last bit, which flips ReLU's derivative where it is ~0 (a subgradient choice):
    whole-model gradients are compared by cosine, the MLP exactly on values that fp32 holds
    exactly (sums of multiples of 1/8, so every summation order gives the same pre-activation)."""
    model = build('b2_li', drop_path_rate=0.).train()
    x = torch.randn(2, 3, 96, 136)
    (fast, g_fast), (ref, g_ref) = (_train_grads(model, x, f) for f in (True, False))
    torch.testing.assert_close(fast, ref, rtol=FP32_TOL, atol=FP32_TOL)
    for name in g_ref:
        cos = F.cosine_similarity(g_fast[name].flatten(), g_ref[name].flatten(), dim=0)
        assert cos >= 0.9999, name

    mlp = Mlp(16, 64, dwconv=True, extra_relu=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randint(-4, 5, p.shape, generator=g) / 8)
        mlp.fc1.bias += 1 / 16  # no pre-activation is exactly 0
    tokens = torch.randint(-4, 5, (2, 6 * 10, 16), generator=g) / 8
    results = []
    for fast in (True, False):
        mlp.zero_grad()
        t = tokens.clone().requires_grad_()
        out = (mlp_forward(mlp, t, (6, 10), ExecPath(ExecKind.ONEDNN_TRAIN, torch.float32))
               if fast else mlp(t, (6, 10)))
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out, t.grad] + [p.grad for p in mlp.parameters()])
    # GELU's derivative is not exact in fp32 and the bands sum it in another order: 3e-5
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=3e-5)


@pytest.mark.parametrize('arch', ['tiny', 'b0'])
def test_training_mlp_keeps_only_its_input(arch):
    """The wide hidden activations are not saved for backward: the fast path keeps a fraction
    of the plain path's activation memory (the MLP saves just its input)."""
    model = build(arch, drop_path_rate=0.).train()
    x = torch.randn(1, 3, 128, 128)

    def saved_bytes(fused):
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t
        model.fast_kernels = fused
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                model(x)
        finally:
            model.fast_kernels = True
        return total
    assert saved_bytes(True) < 0.6 * saved_bytes(False)


def test_training_under_bf16_autocast_reaches_every_weight():
    """bf16 autocast training (the banded MLP recomputes with autograd there): gradients reach
    the fp32 weights and agree with the fp32 plain path in direction."""
    from helpers import random_loss
    model = build('b0', drop_path_rate=0.).train()
    x = torch.randn(2, 3, 64, 96)
    _, g_ref = _train_grads(model, x, False)
    model.zero_grad()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        random_loss(model(x)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        cos = F.cosine_similarity(p.grad.flatten(), g_ref[name].flatten(), dim=0)
        assert cos >= 0.99, name


def test_exec_path_is_decided_from_device_dtype_autocast_grad_and_tracing():
    x = torch.randn(1, 3, 32, 32)
    f32 = torch.float32
    with torch.no_grad():
        assert decide_exec_path(x, f32) == ExecPath(ExecKind.ONEDNN_INFER, f32)
        with torch.autocast('cpu', dtype=torch.bfloat16):  # where oneDNN has bf16 kernels
            assert decide_exec_path(x, f32) == (
                ExecPath(ExecKind.ONEDNN_INFER, torch.bfloat16) if BF16_AVAILABLE else REFERENCE)
        assert decide_exec_path(x, f32, fast_kernels=False) is REFERENCE
        assert decide_exec_path(x.double(), torch.float64) is REFERENCE
        assert decide_exec_path(x, torch.float64) is REFERENCE  # weights oneDNN cannot serve
        with torch.autocast('cpu', dtype=torch.float16):
            assert decide_exec_path(x, f32) is REFERENCE
        assert decide_exec_path(x.to('meta'), f32) is REFERENCE
        seen = []
        torch.jit.trace(lambda t: seen.append(decide_exec_path(t, f32)) or t * 2, x,
                        check_trace=False)
        assert seen == [TRACED]
    assert decide_exec_path(x, f32) == ExecPath(ExecKind.ONEDNN_TRAIN, f32)


def test_layers_follow_the_backbone_decision(monkeypatch):
    """The path is decided once in the backbone's forward and every block takes it: when the
    backbone decides the reference path, no layer runs a fast path (even without autograd,
    where a stage called alone picks the oneDNN path for itself)."""
    model = build('b0').eval()
    x = torch.randn(1, 3, 64, 64)
    calls = []
    decide = pvt_module.decide_runner
    monkeypatch.setattr(pvt_module, 'decide_runner', lambda *a, **k: calls.append(
        decide(*a, **k)) or runner_module.Runner(REFERENCE))

    def fail(*args, **kwargs):
        raise AssertionError('a layer took a fast path the backbone did not choose')
    monkeypatch.setattr(runner_module, 'attention_forward', fail)
    monkeypatch.setattr(runner_module, 'mlp_forward', fail)
    monkeypatch.setattr(runner_module, 'forward_native', fail)
    with torch.no_grad():
        model(x)
    assert [c.path.kind for c in calls] == [ExecKind.ONEDNN_INFER]  # one decision per forward
    monkeypatch.setattr(pvt_module, 'decide_runner', decide)
    with torch.no_grad(), pytest.raises(AssertionError, match='fast path'):
        model.stages[0](x)  # alone: decides itself
    with torch.no_grad():  # a block called alone is the reference computation
        model.stages[0].blocks[0](torch.randn(1, 256, 32), (16, 16))
