"""The native attention tile kernel (pvt_mm/models/fast/csrc/tile_attention.cpp): built by
``make install``, numerically the attention it replaces, used by the inference fast path where
it is built, and the oneDNN matmul chunks where it is not."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import build, require_native

import pvt_mm.models.fast.attention as attn_module
from pvt_mm.models.fast import native
from pvt_mm.models.fast.attention import tiled_attention
from pvt_mm.models.fast.fused import FUSED_DTYPES

pytestmark = pytest.mark.fast  # `pytest -m fast`: the model-code subset

BF16_MIN_COSINE = 0.999


def test_install_built_the_kernel():
    """``make install`` compiles the kernel for this machine (a failed build would leave every
    user of the suite's machine on the slower path without a word)."""
    assert native.kernel() is not None, native.describe()
    assert native.supports(torch.float32)
    assert 'native tile kernels' in native.describe()


def explicit(q, k_t, v, k_bias, v_bias, groups):
    """softmax_g(q_a k_t[a] + k_bias_a) v_a + v_bias_a per head a, in fp64."""
    A, K, M = k_t.shape
    E = v.shape[2]
    q, k_t, v = q.double(), k_t.double(), v.double()
    outs = []
    for a in range(A):
        s = q[:, a * K:(a + 1) * K] @ k_t[a]
        if k_bias is not None:
            s = s + k_bias.view(A, M)[a].double()
        p = s.view(len(q), groups, M // groups).softmax(-1).view(len(q), M)
        o = p @ v[a]
        outs.append(o if v_bias is None else o + v_bias.view(A, E)[a].double())
    return torch.cat(outs, 1)


CASES = [  # N queries, A heads, K, M keys, E, groups, biases
    (1, 1, 64, 1, 64, 1, False),         # one query, one key
    (333, 1, 64, 1025, 64, 1, True),     # PVT-S stage 1 folded, odd N and M (tail tile)
    (100, 2, 64, 65, 64, 1, False),      # two heads
    (257, 1, 128, 3 * 49, 128, 3, True),  # li folded: 3 softmax groups of 49
    (40, 5, 64, 49, 64, 1, True),        # five heads
    (50, 1, 64, 20, 72, 1, True),        # E not a multiple of the 64-column blocks
]


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('case', CASES, ids=lambda c: 'N{}A{}K{}M{}E{}g{}'.format(*c[:6]))
@pytest.mark.parametrize('path', ['native', 'chunks'])
def test_tiled_attention_matches_explicit_softmax(case, dtype, path, monkeypatch):
    if path == 'chunks':
        if dtype not in FUSED_DTYPES:
            pytest.skip(f'{dtype}: no oneDNN kernels for it on this CPU')
        monkeypatch.setattr(native, '_loaded', 'not built (test)')
    else:
        require_native(dtype)
    N, A, K, M, E, groups, biased = case
    # q and out are column slices of wider token maps (row stride != width), as in the model
    q = torch.randn(N, A * K + 8)[:, 4:4 + A * K].to(dtype)
    k_t = (torch.randn(A, K, M) * K ** -0.5).to(dtype)
    v = torch.randn(A, M, E).to(dtype)
    k_bias = torch.randn(A * M) if biased else None
    v_bias = torch.randn(A * E) if biased else None
    wide = torch.full((N, A * E + 3), 7.0, dtype=dtype)
    out = wide[:, 1:1 + A * E]
    if path == 'native':
        calls = []
        real = native.kernel()
        monkeypatch.setattr(native, 'kernel', lambda: calls.append(1) or real)
    tiled_attention(q, k_t, v, out, k_bias, v_bias, groups)
    if path == 'native':
        assert calls, 'the native kernel was not used'
    ref = explicit(q, k_t, v, k_bias, v_bias, groups).to(torch.float32)
    assert (wide[:, 0] == 7).all() and (wide[:, -2:] == 7).all(), 'wrote outside out'
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    else:
        cos = F.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0).item()
        assert cos >= 0.9995
        assert (out.float() - ref).abs().max() <= 0.05 * ref.abs().max() + 0.02


@pytest.mark.parametrize('arch', ['tiny', 'small', 'b0', 'b2_li'])
def test_native_and_chunked_backbones_agree(arch, monkeypatch):
    """Whole backbones: the native kernel against the matmul chunks (fp32 1e-4, bf16 stage
    cosine >= 0.999), including its smallest tile (16 query rows: tails everywhere)."""
    require_native()
    model = build(arch).eval()
    x = torch.randn(2, 3, 96, 136)

    def run(dtype):
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16,
                                             enabled=dtype == torch.bfloat16):
            return [o.float() for o in model(x)]

    monkeypatch.setattr(attn_module, 'TILE_SCORE_BYTES', 1)
    fast = {dt: run(dt) for dt in (torch.float32, torch.bfloat16)}
    monkeypatch.setattr(native, '_loaded', 'not built (test)')
    slow = {dt: run(dt) for dt in (torch.float32, torch.bfloat16)}
    for a, b in zip(fast[torch.float32], slow[torch.float32]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(fast[torch.bfloat16], slow[torch.float32]):
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) >= BF16_MIN_COSINE


def test_attention_kernel_refuses_inconsistent_operands():
    """Bad operands are one clear error from the kernel, not a read out of bounds."""
    require_native()
    mod = native.kernel()
    q, k_t, v, out = torch.randn(8, 64), torch.randn(1, 64, 10), torch.randn(1, 10, 64), \
        torch.empty(8, 64)
    none = torch.empty(0)
    with pytest.raises(RuntimeError, match='v \\(A, M, E\\)'):
        mod.tile_attention(q, k_t, torch.randn(1, 11, 64), out, none, none, 1, 16)
    with pytest.raises(RuntimeError, match='one dtype'):
        mod.tile_attention(q, k_t.double(), v, out, none, none, 1, 16)
    with pytest.raises(RuntimeError, match='groups'):
        mod.tile_attention(q, k_t, v, out, none, none, 3, 16)
    with pytest.raises(RuntimeError, match='k_bias'):
        mod.tile_attention(q, k_t, v, out, torch.randn(9), none, 1, 16)
    with pytest.raises(RuntimeError, match='unit column stride'):
        mod.tile_attention(q.t().contiguous().t(), k_t, v, out, none, none, 1, 16)


def test_switch_and_missing_build_fall_back_with_a_reason(monkeypatch, tmp_path):
    """``PVT_MM_NATIVE=0`` and a build folder without the binary: the matmul chunks run, and
    :func:`describe` (printed by tools/benchmark.py) says why."""
    monkeypatch.setattr(native, '_loaded', native._UNSET)
    monkeypatch.setenv('PVT_MM_NATIVE', '0')
    assert native.kernel() is None and 'PVT_MM_NATIVE=0' in native.describe()
    monkeypatch.setattr(native, '_loaded', native._UNSET)
    monkeypatch.delenv('PVT_MM_NATIVE')
    monkeypatch.setenv('PVT_MM_NATIVE_DIR', str(tmp_path))
    assert native.kernel() is None and 'not built' in native.describe()
    assert not native.supports(torch.float32)
    model = build('b0').eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))  # runs on the chunks


@pytest.mark.parametrize('changed', ['tile_attention.cpp', 'tile_mlp.cpp', 'common.h'])
def test_build_key_follows_source_torch_and_cpu(changed, monkeypatch, tmp_path):
    """A binary is found only for the sources (each file, header included), torch version
    and CPU it was built for."""
    key = native.build_key()
    files = []
    for path in native.SOURCES + native.HEADERS:
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes() + (b'\n// changed\n' if path.name == changed else b''))
        files.append(copy)
    monkeypatch.setattr(native, 'SOURCES', tuple(files[:len(native.SOURCES)]))
    monkeypatch.setattr(native, 'HEADERS', tuple(files[len(native.SOURCES):]))
    assert native.build_key() != key
    monkeypatch.undo()
    assert native.build_key() == key
    monkeypatch.setattr(torch, '__version__', '0.0.0-other')
    assert native.build_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(native, '_cpu_features', lambda: 'flags : sse2')
    assert native.build_key() != key
