"""The native fused MLP (pvt_mm/models/layers/csrc/tile_mlp.cpp): fc1 -> exact GELU -> fc2 over
tiles of tokens for PVT v1's feed-forward at inference; numerically the MLP it replaces, its
GELU exact to fp32 rounding, its weight blocks rebuilt when the weights change, and the oneDNN
row bands wherever it does not apply."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pvt_mm.models.layers import native
from pvt_mm.models.layers.mlp import Mlp

pytestmark = pytest.mark.skipif(native.kernel() is None, reason=native.describe())


def run_kernel(x, w1, b1, w2, b2, tile=64):
    """The kernel alone on (N, C) tokens in x's dtype, with nn.Linear-layout weights."""
    mod = native.kernel()
    out = torch.empty_like(x)
    mod.tile_mlp(x, mod.prepare_weight(w1.to(x.dtype)), b1, mod.prepare_weight(w2.to(x.dtype)),
                 b2, out, tile)
    return out


def reference(x, w1, b1, w2, b2):
    """gelu(x W1^T + b1) W2^T + b2 in fp64 (exact erf GELU)."""
    x, w1, b1, w2, b2 = (t.double() for t in (x, w1, b1, w2, b2))
    return F.gelu(x @ w1.t() + b1) @ w2.t() + b2


CASES = [  # N tokens, C, H, tile
    (1, 64, 512, 64),      # one token
    (333, 64, 512, 64),    # PVT-S stage 1 widths, a tail tile
    (130, 320, 1280, 32),  # stage 3: C not a power of two
    (77, 96, 384, 16),     # C not a multiple of the 64-column blocks
    (0, 64, 256, 64),      # no tokens
]


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('case', CASES, ids=lambda c: 'N{}C{}H{}t{}'.format(*c))
def test_kernel_matches_fp64_reference(case, dtype):
    if not native.supports(dtype):
        pytest.skip(f'{dtype}: {native.describe()}')
    N, C, H, tile = case
    x = torch.randn(N, C)
    w1, w2 = torch.randn(H, C) * C ** -0.5, torch.randn(C, H) * H ** -0.5
    b1, b2 = torch.randn(H), torch.randn(C)
    out = run_kernel(x.to(dtype), w1, b1, w2, b2, tile).float()
    ref = reference(x.to(dtype), w1.to(dtype), b1, w2.to(dtype), b2).float()
    if dtype == torch.float32 or N == 0:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    else:
        assert F.cosine_similarity(out.flatten(), ref.flatten(), dim=0) >= 0.9995
        assert (out - ref).abs().max() <= 0.05 * ref.abs().max() + 0.02


def test_gelu_is_exact_to_fp32_rounding():
    """Identity weights turn the kernel into its GELU: against erf in fp64 over [-12, 12]
    (both tails and the steep middle), the error stays at fp32 rounding."""
    x = torch.linspace(-12, 12, 64 * 400).view(400, 64)
    eye = torch.eye(64)
    out = run_kernel(x, eye, torch.zeros(64), eye, torch.zeros(64))
    exact = F.gelu(x.double())
    assert (out.double() - exact).abs().max() <= 2e-6
    assert ((out.double() - exact).abs() / exact.abs().clamp_min(1.0)).max() <= 1e-6


def _banded_and_native(mlp: Mlp, x: torch.Tensor, hw, dtype, monkeypatch):
    with torch.no_grad():
        fast = mlp._forward_banded(x, hw, dtype).float()
        monkeypatch.setattr(Mlp, 'native_supported', lambda self, d: False)
        bands = mlp._forward_banded(x, hw, dtype).float()
        monkeypatch.undo()
    return fast, bands


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_mlp_native_matches_onednn_bands(dtype, monkeypatch):
    """The v1 MLP at inference: the native kernel (used: counted) against the oneDNN bands."""
    if not native.supports(dtype):
        pytest.skip(f'{dtype}: {native.describe()}')
    mlp = Mlp(64, 512).eval()
    assert mlp.native_supported(dtype)
    x = torch.randn(2, 13 * 11, 64)
    calls = []
    real = native.kernel()
    monkeypatch.setattr(native, 'kernel', lambda: calls.append(1) or real)
    with torch.no_grad():
        fast = mlp._forward_banded(x, (13, 11), dtype).float()
    assert calls, 'the native kernel was not used'
    monkeypatch.undo()
    fast, bands = _banded_and_native(mlp, x, (13, 11), dtype, monkeypatch)
    if dtype == torch.float32:
        torch.testing.assert_close(fast, bands, rtol=1e-5, atol=1e-5)
    else:
        assert F.cosine_similarity(fast.flatten(), bands.flatten(), dim=0) >= 0.9995


def test_changed_weights_rebuild_the_blocks():
    """The weight blocks are cached per weight version: an in-place update (an optimizer
    step, a loaded checkpoint) is seen by the next forward, never a stale copy."""
    mlp = Mlp(64, 256).eval()
    x = torch.randn(1, 40, 64)
    with torch.no_grad():
        before = mlp._forward_banded(x, (5, 8), torch.float32)
        mlp.fc1.weight.mul_(2)
        mlp.fc2.weight.add_(0.1)
        after = mlp._forward_banded(x, (5, 8), torch.float32)
        ref = mlp._forward_reference(x, (5, 8))
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, ref, rtol=1e-5, atol=1e-5)


def test_where_it_does_not_apply_the_bands_run(monkeypatch):
    """v2's MLP (depthwise conv), a hidden width that is not a multiple of 64, or no built
    kernel: the oneDNN bands run, with the reference's result."""
    cases = [Mlp(64, 256, dwconv=True), Mlp(64, 100), Mlp(64, 256)]
    assert not cases[0].native_supported(torch.float32)
    assert not cases[1].native_supported(torch.float32)
    monkeypatch.setattr(native, '_loaded', 'not built (test)')
    assert not cases[2].native_supported(torch.float32)
    x = torch.randn(1, 6 * 7, 64)
    for mlp in cases:
        mlp.eval()
        with torch.no_grad():
            torch.testing.assert_close(mlp._forward_banded(x, (6, 7), torch.float32),
                                       mlp._forward_reference(x, (6, 7)), rtol=1e-5, atol=1e-5)


def test_kernel_refuses_inconsistent_operands():
    """Bad operands are one clear error from the kernel, not a read out of bounds."""
    mod = native.kernel()
    x, out = torch.randn(8, 64), torch.empty(8, 64)
    w1, w2 = mod.prepare_weight(torch.randn(256, 64)), mod.prepare_weight(torch.randn(64, 256))
    b1, b2 = torch.randn(256), torch.randn(64)
    with pytest.raises(RuntimeError, match='w1 blocks'):
        mod.tile_mlp(x, mod.prepare_weight(torch.randn(256, 32)), b1, w2, b2, out, 64)
    with pytest.raises(RuntimeError, match='w2 blocks'):
        mod.tile_mlp(x, w1, b1, mod.prepare_weight(torch.randn(64, 128)), b2, out, 64)
    with pytest.raises(RuntimeError, match='b1'):
        mod.tile_mlp(x, w1, torch.randn(200), w2, b2, out, 64)
    with pytest.raises(RuntimeError, match='one dtype'):
        mod.tile_mlp(x, w1, b1, w2, b2, out.double(), 64)
    with pytest.raises(RuntimeError, match='contiguous'):
        mod.tile_mlp(x.t().contiguous().t(), w1, b1, w2, b2, out, 64)
    with pytest.raises(RuntimeError, match='2-D'):
        mod.prepare_weight(torch.randn(4, 4, 4))
