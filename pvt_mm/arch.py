"""The one table of PVT variants. Configs pick an entry by name (``arch='small'``).

Pure data (no torch, no pvt_mm imports): a base module, so the loading layer reads the table
as well as the models (``tests/test_layers.py``).
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

NUM_STAGES = 4


@dataclass(frozen=True)
class PVTArch:
    """Settings of one PVT variant (one value per stage).

    ``version`` 1: non-overlapping patch embedding, absolute position embeddings, no stage norm.
    ``version`` 2: overlapping patch embedding, depthwise conv in the MLP, a norm after each
    stage. ``linear``: PVTv2-li attention (7x7 average pool instead of a strided reduction).
    """

    version: int
    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratios: tuple[float, ...] = (8, 8, 4, 4)
    linear: bool = False

    def __post_init__(self) -> None:
        if self.version not in (1, 2):
            raise ValueError(f'arch version must be 1 or 2, got {self.version!r}')
        if self.linear and self.version != 2:
            raise ValueError('linear (li) attention exists only in PVTv2')
        for f in ('embed_dims', 'depths', 'num_heads', 'sr_ratios', 'mlp_ratios'):
            value = getattr(self, f)
            if not isinstance(value, (tuple, list)) or len(value) != NUM_STAGES:
                raise ValueError(f'arch {f} must list {NUM_STAGES} values (one per stage), '
                                 f'got {value!r}')
            object.__setattr__(self, f, tuple(value))
            if any(v <= 0 for v in value):
                raise ValueError(f'arch {f} must be positive, got {value!r}')
        for dim, heads in zip(self.embed_dims, self.num_heads):
            if dim % heads:
                raise ValueError(f'embed dim {dim} is not divisible by its {heads} heads')

    @property
    def total_depth(self) -> int:
        return sum(self.depths)

    @property
    def backbone_type(self) -> str:
        """The registered backbone class of this version: ``'PVT'`` (v1) or ``'PVTv2'``."""
        return 'PVT' if self.version == 1 else 'PVTv2'


_V2_DIMS = (64, 128, 320, 512)
ARCHS: dict[str, PVTArch] = {
    # PVT v1 (Wang et al., ICCV 2021)
    'tiny': PVTArch(1, _V2_DIMS, (2, 2, 2, 2)),
    'small': PVTArch(1, _V2_DIMS, (3, 4, 6, 3)),
    'medium': PVTArch(1, _V2_DIMS, (3, 4, 18, 3)),
    'large': PVTArch(1, _V2_DIMS, (3, 8, 27, 3)),
    # the official classification code's pvt_huge_v2 (no released weights)
    'huge': PVTArch(1, (128, 256, 512, 768), (3, 10, 60, 3), num_heads=(2, 4, 8, 12)),
    # PVT v2 (Wang et al., CVMJ 2022)
    'b0': PVTArch(2, (32, 64, 160, 256), (2, 2, 2, 2)),
    'b1': PVTArch(2, _V2_DIMS, (2, 2, 2, 2)),
    'b2': PVTArch(2, _V2_DIMS, (3, 4, 6, 3)),
    'b2_li': PVTArch(2, _V2_DIMS, (3, 4, 6, 3), linear=True),
    'b3': PVTArch(2, _V2_DIMS, (3, 4, 18, 3)),
    'b4': PVTArch(2, _V2_DIMS, (3, 8, 27, 3)),
    'b5': PVTArch(2, _V2_DIMS, (3, 6, 40, 3), mlp_ratios=(4, 4, 4, 4)),
}

# Class names of the official whai362/PVT code -> entries of ARCHS.
OFFICIAL_NAMES: dict[str, str] = {
    **{f'pvt_{n}': n for n in ('tiny', 'small', 'medium', 'large')},
    **{f'pvt_v2_{n}': n for n in ('b0', 'b1', 'b2', 'b2_li', 'b3', 'b4', 'b5')},
}
# Every registered official name -> (ARCHS entry, fixed keyword arguments): the class names
# above plus the official detection code's ``pvt_small_f4`` (its DETR config's backbone:
# PVT-Small returning only the last map). Kept apart from OFFICIAL_NAMES, which is one name
# per variant.
OFFICIAL_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    **{name: (arch, {}) for name, arch in OFFICIAL_NAMES.items()},
    'pvt_small_f4': ('small', {'F4': True}),
}
CUSTOM_ARCH = 'custom'  # arch_name of a dict of settings


def arch_name(spec: PVTArch) -> str:
    """The ARCHS name of ``spec`` (``'b2'``, ``'small'``, ...) or ``'custom'``."""
    return next((name for name, a in ARCHS.items() if a == spec), CUSTOM_ARCH)


def resolve_arch(arch: str | Mapping[str, Any] | PVTArch, version: int) -> PVTArch:
    """An ARCHS name, a dict of custom settings or a PVTArch -> a validated PVTArch.

    A dict needs ``embed_dims`` and ``depths``; other settings default as in PVTArch.
    """
    if isinstance(arch, PVTArch):
        spec = arch
    elif isinstance(arch, str):
        name = OFFICIAL_NAMES.get(arch, arch)
        choices = sorted(k for k, a in ARCHS.items() if a.version == version)
        if name not in ARCHS or ARCHS[name].version != version:
            kind = ARCHS[name].backbone_type if name in ARCHS else ''
            other = f' ({arch!r} is a {kind} arch: type={kind!r})' if kind else ''
            raise ValueError(f'unknown PVT{"v2" if version == 2 else ""} arch {arch!r}{other}; '
                             f'choose one of {choices} or pass a dict of settings')
        spec = ARCHS[name]
    elif isinstance(arch, Mapping):
        allowed = {f.name for f in fields(PVTArch)} - {'version'}
        unknown = sorted(set(arch) - allowed)
        if unknown:
            raise ValueError(f'unknown arch settings {unknown}; allowed: {sorted(allowed)}')
        missing = sorted({'embed_dims', 'depths'} - set(arch))
        if missing:
            raise ValueError(f'custom arch is missing {missing}')
        spec = PVTArch(version=version, **arch)
    else:
        raise TypeError(f'arch must be a name or a dict, got {type(arch).__name__}')
    if spec.version != version:
        raise ValueError(f'arch is PVT v{spec.version}, not v{version}')
    return spec


def check_arch(arch: str) -> str:
    """An ARCHS name or an official class name (``pvt_v2_b2``) -> the ARCHS name; ValueError
    naming the near names and the choices for anything else."""
    name = OFFICIAL_NAMES.get(arch, arch) if isinstance(arch, str) else arch
    if name not in ARCHS:
        close = difflib.get_close_matches(str(arch), list(ARCHS) + list(OFFICIAL_NAMES), n=3)
        hint = f' (did you mean {" or ".join(close)}?)' if close else ''
        raise ValueError(f'unknown PVT arch {arch!r}{hint}; choose one of {sorted(ARCHS)} '
                         'or an official name such as pvt_v2_b2')
    return name
