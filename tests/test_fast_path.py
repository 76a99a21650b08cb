"""The inference fast path (fused oneDNN kernels, row-banded MLP, SDPA) against the reference
path (plain ops, explicit softmax attention, whole maps), in fp32 and under bf16 autocast."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import build

import pvt_mm.models.layers.attention as attn_module
import pvt_mm.models.layers.mlp as mlp_module
from pvt_mm.models.backbones import ARCHS
from pvt_mm.models.layers.fused import FUSED_AVAILABLE, set_fused_kernels

FP32_TOL = 1e-4
BF16_MIN_COSINE = 0.999  # per stage output, bf16 autocast vs fp32 reference (documented)


def reference(model, x):
    """Plain ops, explicit attention, whole-map MLP."""
    mode = model.attn_mode
    set_fused_kernels(False)
    model.attn_mode = 'explicit'
    try:
        with torch.no_grad():
            return model(x)
    finally:
        set_fused_kernels(True)
        model.attn_mode = mode


def test_fused_kernels_available_on_this_build():
    assert FUSED_AVAILABLE


@pytest.mark.parametrize('arch', sorted(ARCHS))
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


@pytest.mark.parametrize('arch', ['tiny', 'b0', 'b2_li'])
def test_row_bands_with_halo_match_whole_maps(arch, monkeypatch):
    """Force several bands per MLP (down to one row each) so band edges and the depthwise
    conv's halo rows are exercised, and several query chunks per attention (down to one
    query each); results equal the whole-map reference computation."""
    model = build(arch).eval()
    x = torch.randn(2, 3, 96, 136)
    ref = reference(model, x)
    for band_bytes in (1, 2 * 34 * 256 * 4 * 3):  # 1 row; 3 rows of stage 1 (B=2, W=34)
        monkeypatch.setattr(mlp_module, 'INFER_BAND_BYTES', band_bytes)
        # and attention over chunks of 1 and of 100 queries
        monkeypatch.setattr(attn_module, 'INFER_SCORE_BYTES', 1 if band_bytes == 1 else 100 * 4)
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref, rtol=FP32_TOL, atol=FP32_TOL)


def test_training_takes_the_autograd_path():
    """With gradients enabled the plain ops run (the fused kernels have no backward)."""
    model = build('b0', drop_path_rate=0.).train()
    outs = model(torch.randn(1, 3, 64, 64))
    assert all(o.requires_grad for o in outs)
    assert outs[0].grad_fn is not None


@pytest.mark.parametrize('arch', ['tiny', 'b2_li'])
def test_onednn_training_linear_matches_plain_gradients(arch):
    """The oneDNN training linear gives the plain path's outputs and gradients (fp32), and
    runs under bf16 autocast with gradients reaching the fp32 weights."""
    from helpers import random_loss
    model = build(arch, drop_path_rate=0.).train()
    x = torch.randn(2, 3, 64, 96)
    results = []
    for fused in (True, False):
        set_fused_kernels(fused)
        try:
            model.zero_grad()
            outs = model(x)
            random_loss(outs).backward()
        finally:
            set_fused_kernels(True)
        results.append((outs, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (fast, g_fast), (ref, g_ref) = results
    torch.testing.assert_close(fast, ref, rtol=FP32_TOL, atol=FP32_TOL)
    for name in g_ref:  # relative to each gradient's scale
        err = (g_fast[name] - g_ref[name]).abs().max()
        assert err <= 1e-4 * g_ref[name].abs().max() + 1e-8, name
    model.zero_grad()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        random_loss(model(x)).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0
               for p in model.parameters())
