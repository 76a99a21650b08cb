"""Argument and input checks of the PVT backbones: each bad value gets an error that names it
and what is allowed, at construction (arguments) or at the top of ``forward`` (the batch)."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any, NamedTuple

import torch
from torch import Tensor

HW = tuple[int, int]
# dtypes torch.autocast computes convolutions and matmuls in (or casts to)
AUTOCAST_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_SEARCHED_SIZE = 1 << 16


def is_int(value: Any) -> bool:
    """A Python / NumPy integer, not a bool (``True`` is an int in Python)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high]; TypeError / ValueError naming ``name`` otherwise."""
    allowed = f'an integer in [{low}, {high}]' if high is not None else f'an integer >= {low}'
    if not is_int(value):
        raise TypeError(f'{name} must be {allowed}, got {value!r} ({type(value).__name__})')
    if value < low or (high is not None and value > high):
        raise ValueError(f'{name} must be {allowed}, got {value!r}')
    return int(value)


def check_rate(name: str, value: Any) -> float:
    """A probability in [0, 1) (dropout, stochastic depth)."""
    if not isinstance(value, Real) or isinstance(value, bool):
        raise TypeError(f'{name} must be a number in [0, 1), got {value!r} '
                        f'({type(value).__name__})')
    if not 0 <= value < 1:
        raise ValueError(f'{name} must be in [0, 1), got {value!r}')
    return float(value)


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def check_pretrained(pretrained: Any) -> None:
    if pretrained is not None and not _is_path(pretrained):
        raise TypeError(f'pretrained must be a checkpoint path or URL (str) or None, got '
                        f'{pretrained!r} ({type(pretrained).__name__})')


def check_init_cfg(init_cfg: Any) -> None:
    """None, a dict or a list of dicts; every ``Pretrained`` entry names its checkpoint."""
    if init_cfg is None:
        return
    entries = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise TypeError(f'init_cfg must be a dict, a list of dicts or None, got '
                            f'{init_cfg!r} ({type(init_cfg).__name__})')
        if entry.get('type') == 'Pretrained':
            ckpt = entry.get('checkpoint')
            if not _is_path(ckpt):
                raise ValueError(f"init_cfg {dict(entry)} needs checkpoint='<path or URL>' "
                                 f'(a str), got {ckpt!r}')


def to_hw(name: str, size: Any, minimum: int) -> HW:
    """An int or an (H, W) pair (a 1-tuple counts for both) -> (H, W), each >= ``minimum``."""
    pair = (size, size) if is_int(size) else tuple(size) if isinstance(size, Sequence) \
        and not isinstance(size, str) else None
    if pair is not None and len(pair) == 1:
        pair = pair * 2
    if pair is None or len(pair) != 2 or not all(is_int(v) for v in pair):
        raise TypeError(f'{name} must be an int or an (H, W) pair of ints, got {size!r}')
    if min(pair) < minimum:
        raise ValueError(f'{name} {size!r} is too small: H and W must be at least {minimum} '
                         f'(stride 32: every stage needs at least a 1x1 grid)')
    return int(pair[0]), int(pair[1])


def resolve_out_indices(out_indices: Any, F4: bool, num_stages: int) -> tuple[int, ...]:
    """``out_indices`` (ints, negative from the end, in increasing stage order) -> unique
    stage indices; ``F4`` -> only the last stage."""
    items = (out_indices,) if is_int(out_indices) else out_indices
    if not isinstance(items, Sequence) or isinstance(items, str) \
            or not all(is_int(i) for i in items):
        raise TypeError(f'out_indices must be a sequence of integer stage indices in '
                        f'0..{num_stages - 1}, got {out_indices!r}')
    idx = []
    for i in items:
        if not -num_stages <= i < num_stages:
            raise ValueError(f'out_indices entry {i} is outside 0..{num_stages - 1}')
        idx.append(int(i) % num_stages)
    if not idx or len(set(idx)) != len(idx):
        raise ValueError(f'out_indices must be non-empty and unique, got {out_indices}')
    if idx != sorted(idx):
        raise ValueError(f'out_indices must list stages in increasing order (the maps are '
                         f'returned from stage 1 to 4), got {tuple(items)}: use '
                         f'{tuple(sorted(idx))}')
    if F4:
        if tuple(idx) not in (tuple(range(num_stages)), (num_stages - 1,)):
            raise ValueError(f'F4=True returns only the last stage; it conflicts with '
                             f'out_indices={tuple(items)}')
        return (num_stages - 1,)
    return tuple(idx)


# ---- geometry ----------------------------------------------------------------------------
class StageGeometry(NamedTuple):
    """A stage's patch-embedding conv (kernel, stride, padding) and the smallest grid its
    attention needs after it (the strided reduction conv's kernel; 1 when it pools or does
    not reduce)."""
    kernel: int
    stride: int
    padding: int
    need: int


def stage_geometry(strides: Sequence[int], sr_ratios: Sequence[int], overlap: bool,
                   linear: bool) -> list[StageGeometry]:
    """The rule of :class:`~pvt_mm.models.backbones.pvt.PVTStage`: v1 embeds with
    kernel = stride (no padding: sizes floor), v2 with kernel 2*stride-1 and padding
    kernel//2 (sizes ceil)."""
    out = []
    for s, sr in zip(strides, sr_ratios):
        k = 2 * s - 1 if overlap else s
        out.append(StageGeometry(k, s, k // 2 if overlap else 0, 1 if linear else sr))
    return out


def stage_sizes(size: int, stages: Sequence[StageGeometry]) -> list[int]:
    """The grid size (along one axis) after each stage's embedding:
    floor((size + 2p - k) / s) + 1, as the conv computes it."""
    out = []
    for g in stages:
        size = (size + 2 * g.padding - g.kernel) // g.stride + 1
        out.append(size)
    return out


def min_input_size(stages: Sequence[StageGeometry]) -> int:
    """The smallest H (and W) whose every stage grid is at least the stage's ``need``."""
    for size in range(1, MAX_SEARCHED_SIZE):
        if all(h >= g.need for h, g in zip(stage_sizes(size, stages), stages)):
            return size
    raise ValueError(f'no input size up to {MAX_SEARCHED_SIZE} fits these stages: {stages}')


# ---- the batch ---------------------------------------------------------------------------
def check_input(x: Any, name: str, in_channels: int, min_size: int,
                param_dtype: torch.dtype) -> None:
    """Rank, batch size, channels, dtype and size of a (B, C, H, W) batch."""
    if not isinstance(x, Tensor):
        raise TypeError(f'{name} expects a tensor, got {type(x).__name__}')
    if x.dim() != 4:
        raise ValueError(f'{name} expects a (B, C, H, W) batch, got shape {tuple(x.shape)}')
    if x.shape[0] == 0:
        raise ValueError(f'{name} got an empty batch (shape {tuple(x.shape)}): the batch size '
                         f'must be at least 1')
    if x.shape[1] != in_channels:
        raise ValueError(f'{name} expects {in_channels} input channels, got '
                         f'{x.shape[1]} (shape {tuple(x.shape)})')
    if not x.is_floating_point():
        raise TypeError(f'{name} expects a floating-point image, got {x.dtype}')
    if x.dtype != param_dtype and not (x.dtype in AUTOCAST_INPUT_DTYPES
                                       and torch.is_autocast_enabled(x.device.type)):
        raise TypeError(
            f'{name} got a {x.dtype} input but its parameters are {param_dtype}: give '
            f'{param_dtype} input, convert the model (model.to({x.dtype})), or run under '
            f'torch.autocast (float32/float16/bfloat16 input)')
    if min(x.shape[-2:]) < min_size:
        raise ValueError(f'input {x.shape[-2]}x{x.shape[-1]} is too small for {name}: '
                         f'H and W must be at least {min_size} (the smallest size whose grid '
                         f'covers every stage\'s attention reduction)')
