"""When the fast path may run a module: only where it computes exactly the stock computation.

Like PyTorch's own ``nn.TransformerEncoderLayer`` fast path, each condition is checked on every
forward and the first that fails is the reason the module runs its own (reference) forward
instead. The fast path bypasses some modules' ``forward`` (it reads their weights): those must
be the stock classes with their stock methods and settings, and no hooks, so that nothing the
user wrote or registered is skipped. Modules the fast path calls as modules (``attn.sr``,
``attn.norm``, ``block.norm1``, ``drop_path``, dropouts) may be anything. The table of
conditions is in docs/fast_path.md.
"""
from __future__ import annotations

from typing import NamedTuple

from timm.layers import DropPath
from torch import nn
from torch.nn.modules import module as _module

from ..layers.attention import SpatialReductionAttention
from ..layers.block import PVTBlock
from ..layers.mlp import DWConv, Mlp

# the methods each class is used through; a subclass, a class-level patch or an instance
# attribute of that name means the computation is no longer the stock one
_METHODS: dict[type, tuple[str, ...]] = {
    SpatialReductionAttention: ('forward', 'reduce', '_attend'),
    Mlp: ('forward',),
    DWConv: ('forward',),
    PVTBlock: ('forward',),
    nn.Linear: ('forward',),
    nn.Conv2d: ('forward', '_conv_forward'),
    nn.LayerNorm: ('forward',),
    nn.GELU: ('forward',),
    nn.ReLU: ('forward',),
    nn.Dropout: ('forward',),
    DropPath: ('forward',),
}
_STOCK = {cls: {name: getattr(cls, name) for name in names} for cls, names in _METHODS.items()}
_GLOBAL_HOOKS = ('_global_forward_hooks', '_global_forward_pre_hooks', '_global_backward_hooks',
                 '_global_backward_pre_hooks')


class BlockPlan(NamedTuple):
    """What the fast path runs of one block; a ``None`` field is a part that runs fast, a
    string the reason the part runs its own forward."""

    block: str | None  # the whole block (attention and MLP then run as modules)
    attn: str | None
    mlp: str | None
    fused_mlp_half: str | None  # ``x + mlp(norm2(x))`` in one native pass


def global_hooks() -> str | None:
    """The reason when module hooks are registered for every module (they would not fire for
    the modules the fast path bypasses)."""
    for name in _GLOBAL_HOOKS:
        if getattr(_module, name, None):
            return f'global module hooks are registered ({name.strip("_")})'
    return None


def stock(m: nn.Module | None, cls: type) -> str | None:
    """None when ``m`` is exactly ``cls`` with its stock methods and no hooks; else why not."""
    if m is None:
        return f'missing (a {cls.__name__} is expected)'
    if type(m) is not cls:
        return f'{type(m).__name__} is not {cls.__name__}'
    for name, fn in _STOCK[cls].items():
        if name in m.__dict__:
            return f'{name} is replaced on the instance'
        if getattr(cls, name) is not fn:
            return f'{cls.__name__}.{name} is patched'
    if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
        return 'hooks are registered on it'
    return None


def _first(*reasons: tuple[str, str | None]) -> str | None:
    for where, reason in reasons:
        if reason is not None:
            return f'{where}: {reason}' if where else reason
    return None


def attention_reason(attn: nn.Module) -> str | None:
    """None when the fast attention computes exactly ``attn(x, hw)``: a stock
    :class:`SpatialReductionAttention` with stock ``q``, ``kv``, ``proj`` linears (their
    weights are read directly) and a stock ``proj_drop`` (its rate is read)."""
    reason = stock(attn, SpatialReductionAttention)
    if reason is not None:
        return reason
    return _first(*((n, stock(getattr(attn, n), nn.Linear)) for n in ('q', 'kv', 'proj')),
                  ('proj_drop', stock(attn.proj_drop, nn.Dropout)))


def mlp_reason(mlp: nn.Module) -> str | None:
    """None when the fast MLP computes exactly ``mlp(x, hw)``: a stock :class:`Mlp` whose
    ``fc1`` / ``fc2`` linears, ``relu``, exact-erf GELU ``act``, 3x3 depthwise ``dwconv`` and
    ``drop`` are stock (the fast path fuses them into its kernels)."""
    reason = stock(mlp, Mlp)
    if reason is not None:
        return reason
    act = stock(mlp.act, nn.GELU)
    if act is None and mlp.act.approximate != 'none':
        act = f"GELU(approximate={mlp.act.approximate!r}) (the kernels compute the exact GELU)"
    return _first(('fc1', stock(mlp.fc1, nn.Linear)), ('fc2', stock(mlp.fc2, nn.Linear)),
                  ('act', act), ('drop', stock(mlp.drop, nn.Dropout)),
                  ('relu', None if mlp.relu is None else stock(mlp.relu, nn.ReLU)),
                  ('dwconv', None if mlp.dwconv is None else _dwconv_reason(mlp.dwconv)))


def _dwconv_reason(dw: nn.Module) -> str | None:
    reason = stock(dw, DWConv)
    if reason is not None:
        return reason
    conv = dw.dwconv
    reason = stock(conv, nn.Conv2d)
    if reason is None and not (conv.kernel_size == (3, 3) and conv.padding == (1, 1)
                               and conv.stride == (1, 1) and conv.dilation == (1, 1)
                               and conv.padding_mode == 'zeros'
                               and conv.groups == conv.in_channels == conv.out_channels):
        reason = 'not a 3x3 depthwise conv with zero padding 1 and stride 1'
    return None if reason is None else f'dwconv: {reason}'


def block_plan(block: nn.Module) -> BlockPlan:
    """The plan for one block: which of its parts run fast, and why the others do not."""
    reason = stock(block, PVTBlock)
    if reason is not None:
        return BlockPlan(reason, reason, reason, reason)
    attn, mlp = attention_reason(block.attn), mlp_reason(block.mlp)
    fused = _first(('mlp', mlp), ('norm2', stock(block.norm2, nn.LayerNorm)),
                   ('drop_path', stock(block.drop_path, DropPath)))
    if fused is None and not (block.norm2.elementwise_affine and block.norm2.bias is not None):
        fused = 'norm2: LayerNorm without weight or bias'
    if fused is None and block.training and block.drop_path.drop_prob > 0:
        fused = 'drop_path: stochastic depth is active'
    return BlockPlan(None, attn, mlp, fused)
