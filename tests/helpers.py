"""Test helpers: random checkpoints in the official whai362/PVT key layout."""
from __future__ import annotations

import re

import torch
from torch import Tensor

from pvt_mm.models.backbones import ARCHS, build_pvt

NUM_CLASSES = 1000


def build(arch: str, **kwargs) -> torch.nn.Module:
    return build_pvt(arch, **kwargs)


def _official_key(key: str) -> str:
    """pvt_mm key -> official key (test-only inverse of the rename table)."""
    for pattern, template in ((r'stages\.(\d)\.patch_embed\.(.+)', 'patch_embed{s}.{1}'),
                              (r'stages\.(\d)\.pos_embed', 'pos_embed{s}'),
                              (r'stages\.(\d)\.blocks\.(.+)', 'block{s}.{1}'),
                              (r'stages\.(\d)\.norm\.(.+)', 'norm{s}.{1}')):
        if m := re.fullmatch(pattern, key):
            return template.format(*m.groups(), s=int(m.group(1)) + 1)
    raise KeyError(key)


def _random_like(key: str, shape: torch.Size, g: torch.Generator) -> Tensor:
    leaf = key.rsplit('.', 2)[-2:] if '.' in key else [key]
    if 'pos_embed' in key or 'cls_token' in key:
        return torch.randn(shape, generator=g) * 0.02
    if len(shape) == 1:  # biases and norm parameters
        base = 1.0 if leaf[-1] == 'weight' else 0.0
        return base + torch.randn(shape, generator=g) * 0.1
    fan_in = shape[1:].numel()
    return torch.randn(shape, generator=g) / fan_in ** 0.5


def official_state_dict(arch: str, seed: int = 0) -> dict[str, Tensor]:
    """Random weights in the official release layout: v1 with ``cls_token``, final ``norm``,
    ``pos_embed4`` carrying the cls slot; both with the classifier ``head``."""
    g = torch.Generator().manual_seed(seed)
    spec = ARCHS[arch]
    ours = build(arch).state_dict()
    sd = {}
    for key, value in ours.items():
        okey = _official_key(key)
        shape = value.shape
        if okey == 'pos_embed4':
            shape = torch.Size([1, shape[1] + 1, shape[2]])
        sd[okey] = _random_like(okey, shape, g)
    c4 = spec.embed_dims[-1]
    if spec.version == 1:
        sd['cls_token'] = torch.randn(1, 1, c4, generator=g) * 0.02
        sd['norm.weight'] = 1 + torch.randn(c4, generator=g) * 0.1
        sd['norm.bias'] = torch.randn(c4, generator=g) * 0.1
    sd['head.weight'] = torch.randn(NUM_CLASSES, c4, generator=g) * 0.02
    sd['head.bias'] = torch.zeros(NUM_CLASSES)
    return sd


def max_abs_diff(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> float:
    assert len(a) == len(b)
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(a, b))


def random_loss(outs: tuple[Tensor, ...], seed: int = 0) -> Tensor:
    """A loss with a non-zero gradient everywhere: random projections of each map (a plain
    sum is blind to everything before a LayerNorm with unit weights)."""
    g = torch.Generator().manual_seed(seed)
    return sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs)


def require_native(dtype: torch.dtype = torch.float32) -> None:
    """Skip a native-kernel test where the kernel does not run ``dtype`` (a user's machine
    without a compiler, bf16 on a CPU without VNNI), but fail on CI (``CI`` set), where
    ``make install`` must have built it: a green CI never hides an untested kernel."""
    import os

    import pytest

    from pvt_mm.models.fast import native
    if native.supports(dtype):
        return
    reason = f'native kernel does not run {dtype}: {native.describe()}'
    if os.environ.get('CI') and (dtype == torch.float32 or native.kernel() is None):
        pytest.fail(f'on CI the native kernels must be built: {reason}')
    pytest.skip(reason)
