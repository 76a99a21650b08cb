"""The native fused MLP (pvt_mm/models/fast/csrc/tile_mlp.cpp): [x +] fc2(GELU(fc1([norm] x)))
over tiles of tokens for PVT v1's feed-forward half of a block at inference; numerically the
computation it replaces, its GELU exact to fp32 rounding, its weight blocks rebuilt when the
weights change, and the oneDNN row bands wherever it does not apply."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from helpers import require_native

import pvt_mm.models.fast.mlp as fast_mlp
from pvt_mm.models.fast import native
from pvt_mm.models.fast.bands import mlp_banded
from pvt_mm.models.fast.exec_path import decide_exec_path
from pvt_mm.models.fast.runner import Runner
from pvt_mm.models.layers.block import PVTBlock
from pvt_mm.models.layers.mlp import Mlp

# on CI a missing kernel fails each test (helpers.require_native); elsewhere it skips them
pytestmark = [pytest.mark.fast,  # `pytest -m fast`: the model-code subset
              pytest.mark.skipif(native.kernel() is None and not os.environ.get('CI'),
                                 reason=native.describe())]


NONE = torch.empty(0)


def run_kernel(x, w1, b1, w2, b2, tile=64, dtype=None, norm=None, residual=False):
    """The kernel alone on (N, C) tokens x, matmuls in ``dtype`` (x's by default), with
    nn.Linear-layout weights and an optional LayerNorm ``norm`` = (weight, bias, eps)."""
    mod = native.kernel()
    dtype = dtype or x.dtype
    out = torch.empty_like(x)
    nw, nb, eps = norm if norm is not None else (NONE, NONE, 0.0)
    mod.tile_mlp(x, nw, nb, eps, mod.prepare_weight(w1.to(dtype)), b1,
                 mod.prepare_weight(w2.to(dtype)), b2, residual, out, tile)
    return out


def reference(x, w1, b1, w2, b2, norm=None, residual=False):
    """[x +] gelu(norm(x) W1^T + b1) W2^T + b2 in fp64 (exact erf GELU)."""
    x, w1, b1, w2, b2 = (t.double() for t in (x, w1, b1, w2, b2))
    h = x if norm is None else F.layer_norm(x, x.shape[-1:], norm[0].double(),
                                            norm[1].double(), norm[2])
    y = F.gelu(h @ w1.t() + b1) @ w2.t() + b2
    return x + y if residual else y


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
    require_native(dtype)
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


@pytest.mark.parametrize('io, mm', [(torch.float32, torch.float32),
                                    (torch.float32, torch.bfloat16),
                                    (torch.bfloat16, torch.bfloat16)],
                         ids=['fp32', 'fp32-tokens-bf16-matmuls', 'bf16'])
def test_kernel_with_norm_and_residual(io, mm):
    """The block's form: fp32 or bf16 tokens (autocast keeps the residual stream fp32) with
    fp32 or bf16 matmuls, the LayerNorm and the residual inside the kernel. (bf16 tokens with
    fp32 matmuls are refused: test_mlp_kernel_refuses_inconsistent_operands.)"""
    require_native(mm)
    N, C, H = 150, 64, 256
    x = (torch.randn(N, C) * 3 + 1).to(io)  # off-centre rows: the norm matters
    w1, w2 = torch.randn(H, C) * C ** -0.5, torch.randn(C, H) * H ** -0.5
    b1, b2 = torch.randn(H), torch.randn(C)
    norm = (torch.rand(C) + 0.5, torch.randn(C), 1e-6)
    out = run_kernel(x, w1, b1, w2, b2, 32, mm, norm, residual=True).float()
    ref = reference(x, w1.to(mm), b1, w2.to(mm), b2, norm, residual=True).float()
    if mm == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    else:
        assert F.cosine_similarity((out - x.float()).flatten(), (ref - x.float()).flatten(),
                                   dim=0) >= 0.9995  # the MLP's part, not the residual's


def test_gelu_is_exact_to_fp32_rounding():
    """Identity weights turn the kernel into its GELU: against erf in fp64 over [-12, 12]
    (both tails and the steep middle), the error stays at fp32 rounding."""
    x = torch.linspace(-12, 12, 64 * 400).view(400, 64)
    eye = torch.eye(64)
    out = run_kernel(x, eye, torch.zeros(64), eye, torch.zeros(64))
    exact = F.gelu(x.double())
    assert (out.double() - exact).abs().max() <= 2e-6
    assert ((out.double() - exact).abs() / exact.abs().clamp_min(1.0)).max() <= 1e-6


def _infer_path(mlp: Mlp, x: torch.Tensor, hw, dtype) -> torch.Tensor:
    from pvt_mm.models.fast.exec_path import ExecKind, ExecPath
    with torch.no_grad():
        return fast_mlp.mlp_forward(mlp, x, hw, ExecPath(ExecKind.ONEDNN_INFER, dtype))


def _banded_and_native(mlp: Mlp, x: torch.Tensor, hw, dtype, monkeypatch):
    fast = _infer_path(mlp, x, hw, dtype).float()
    with torch.no_grad():
        bands = mlp_banded(mlp, x, hw, dtype).float()
    return fast, bands


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_mlp_native_matches_onednn_bands(dtype, monkeypatch):
    """The v1 MLP at inference: the native kernel (used: counted) against the oneDNN bands."""
    require_native(dtype)
    mlp = Mlp(64, 512).eval()
    assert fast_mlp.native_supported(mlp, dtype)
    x = torch.randn(2, 13 * 11, 64)
    calls = []
    real = native.kernel()
    monkeypatch.setattr(native, 'kernel', lambda: calls.append(1) or real)
    _infer_path(mlp, x, (13, 11), dtype)
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
    require_native()
    mlp = Mlp(64, 256).eval()
    x = torch.randn(1, 40, 64)
    before = _infer_path(mlp, x, (5, 8), torch.float32)
    with torch.no_grad():
        mlp.fc1.weight.mul_(2)
        mlp.fc2.weight.add_(0.1)
        ref = mlp(x, (5, 8))
    after = _infer_path(mlp, x, (5, 8), torch.float32)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_block_fuses_its_mlp_half(dtype, monkeypatch):
    """A v1 block at inference computes ``x + mlp(norm2(x))`` in the kernel (counted), with
    the result of the unfused fast path and of the reference block; training mode with
    stochastic depth does not fuse."""
    from pvt_mm.models.fast.eligibility import block_plan
    require_native(dtype)
    block = PVTBlock(64, 1, 8, 8).eval()
    for norm in (block.norm1, block.norm2):
        torch.nn.init.normal_(norm.weight, 1, 0.3)
        torch.nn.init.normal_(norm.bias, 0, 0.3)
    x = torch.randn(2, 16 * 12, 64)

    def run():
        with torch.no_grad(), torch.autocast('cpu', torch.bfloat16,
                                             enabled=dtype == torch.bfloat16):
            path = decide_exec_path(x, torch.float32)
            return Runner(path).block(block, x, (16, 12)).float()

    assert block_plan(block).fused_mlp_half is None
    fused = run()
    calls = []
    real = native.kernel()
    residual = []
    monkeypatch.setattr(native, 'kernel', lambda: calls.append(1) or real)
    forward_native = fast_mlp.forward_native
    monkeypatch.setattr('pvt_mm.models.fast.runner.forward_native', lambda *a, **k: residual.append(
        k.get('residual')) or forward_native(*a, **k))
    run()
    assert calls and residual == [True], 'the block did not fuse its MLP half'
    monkeypatch.undo()
    monkeypatch.setattr('pvt_mm.models.fast.runner.native_supported', lambda m, d: False)
    monkeypatch.setattr(fast_mlp, 'native_supported', lambda m, d: False)
    plain = run()
    with torch.no_grad(), torch.autocast('cpu', torch.bfloat16, enabled=dtype == torch.bfloat16):
        ref = block(x, (16, 12)).float()
    if dtype == torch.float32:
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4)
    else:
        assert F.cosine_similarity(fused.flatten(), plain.flatten(), dim=0) >= 0.9995
    monkeypatch.undo()
    block.train()
    block.drop_path.drop_prob = 0.5
    assert block_plan(block).fused_mlp_half is not None
    block.mlp.drop.p = 0.1
    assert not fast_mlp.native_supported(block.mlp, torch.float32)


def test_where_it_does_not_apply_the_bands_run(monkeypatch):
    """v2's MLP (depthwise conv), a hidden width that is not a multiple of 64, or no built
    kernel: the oneDNN bands run, with the reference's result."""
    cases = [Mlp(64, 256, dwconv=True), Mlp(64, 100), Mlp(64, 256)]
    assert not fast_mlp.native_supported(cases[0], torch.float32)
    assert not fast_mlp.native_supported(cases[1], torch.float32)
    monkeypatch.setattr(native, '_loaded', 'not built (test)')
    assert not fast_mlp.native_supported(cases[2], torch.float32)
    x = torch.randn(1, 6 * 7, 64)
    for mlp in cases:
        mlp.eval()
        with torch.no_grad():
            torch.testing.assert_close(_infer_path(mlp, x, (6, 7), torch.float32),
                                       mlp(x, (6, 7)), rtol=1e-5, atol=1e-5)


def test_mlp_kernel_refuses_inconsistent_operands():
    """Bad operands are one clear error from the kernel, not a read out of bounds."""
    require_native()
    mod = native.kernel()
    x, out = torch.randn(8, 64), torch.empty(8, 64)
    w1, w2 = mod.prepare_weight(torch.randn(256, 64)), mod.prepare_weight(torch.randn(64, 256))
    b1, b2 = torch.randn(256), torch.randn(64)

    def call(x=x, w1=w1, b1=b1, w2=w2, b2=b2, out=out, nw=NONE, nb=NONE):
        mod.tile_mlp(x, nw, nb, 1e-6, w1, b1, w2, b2, False, out, 64)

    call()
    with pytest.raises(RuntimeError, match='w1 blocks'):
        call(w1=mod.prepare_weight(torch.randn(256, 32)))
    with pytest.raises(RuntimeError, match='w2 blocks'):
        call(w2=mod.prepare_weight(torch.randn(64, 128)))
    with pytest.raises(RuntimeError, match='b1'):
        call(b1=torch.randn(200))
    with pytest.raises(RuntimeError, match='one dtype'):
        call(out=out.double())
    with pytest.raises(RuntimeError, match='x fp32 or'):
        call(x=x.double())
    if native.supports(torch.bfloat16):
        with pytest.raises(RuntimeError, match='x fp32 or'):
            call(x=x.bfloat16())  # bf16 tokens with fp32 weights
    with pytest.raises(RuntimeError, match='contiguous'):
        call(x=x.t().contiguous().t())
    with pytest.raises(RuntimeError, match='norm weight and bias'):
        call(nw=torch.ones(64))
    with pytest.raises(RuntimeError, match='norm weight and bias'):
        call(nw=torch.ones(32), nb=torch.zeros(32))
    with pytest.raises(RuntimeError, match='2-D'):
        mod.prepare_weight(torch.randn(4, 4, 4))
