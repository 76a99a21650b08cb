"""PVT v1 and v2 backbones for MMDetection / MMSegmentation.

Registered in mmengine's root ``MODELS`` registry, which mmdet's and mmseg's registries fall
back to, as ``PVT`` (v1), ``PVTv2`` and the official class names (``pvt_small``,
``pvt_v2_b2``, ...). mmdet's own ``PyramidVisionTransformer(V2)`` are left alone.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from timm.layers import trunc_normal_
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..layers import PatchEmbed, PVTBlock, nlc_to_nchw, resize_pos_embed
from ..layers.attention import AttnMode
from ..layers.block import BLOCK_LN_EPS
from ..layers.shape import HW
from .arch import ARCHS, NUM_STAGES, OFFICIAL_NAMES, PVTArch, resolve_arch

STEM_STRIDE = 4  # stage 1 embeds 4x4 patches; each later stage halves the resolution
STAGE_STRIDE = 2


class PVTStage(nn.Module):
    """Patch embedding, [position embedding,] transformer blocks[, norm].

    Input: (B, C_in, H, W) map. Output: (B, H'*W', C) tokens and (H', W').
    """

    def __init__(self, in_channels: int, dim: int, depth: int, num_heads: int, sr_ratio: int,
                 mlp_ratio: float, stride: int, overlap: bool, linear: bool,
                 pos_grid: HW | None, drop_path: Sequence[float], drop: float = 0.,
                 attn_drop: float = 0., qkv_bias: bool = True, attn_mode: AttnMode = 'sdpa'
                 ) -> None:
        super().__init__()
        kernel = 2 * stride - 1 if overlap else stride
        self.patch_embed = PatchEmbed(in_channels, dim, kernel, stride, kernel // 2 if overlap else 0)
        self.pos_grid = pos_grid
        if pos_grid is None:
            self.register_parameter('pos_embed', None)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, pos_grid[0] * pos_grid[1], dim))
        self.pos_drop = nn.Dropout(drop)
        self.blocks = nn.ModuleList(
            PVTBlock(dim, num_heads, mlp_ratio, sr_ratio, linear=linear, dwconv=overlap,
                     qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop, drop_path=dp,
                     attn_mode=attn_mode)
            for dp in drop_path)
        self.norm = nn.LayerNorm(dim, eps=BLOCK_LN_EPS) if overlap else None
        self.with_cp = False

    def _embed(self, x: Tensor) -> tuple[Tensor, HW]:
        x, hw = self.patch_embed(x)
        if self.pos_embed is not None:
            x = self.pos_drop(x + resize_pos_embed(self.pos_embed, self.pos_grid, hw))
        return x, hw

    def _last_block(self, x: Tensor, hw: HW) -> Tensor:
        x = self.blocks[-1](x, hw)
        return x if self.norm is None else self.norm(x)

    def forward(self, x: Tensor) -> tuple[Tensor, HW]:
        if not (self.with_cp and torch.is_grad_enabled()):
            x, hw = self._embed(x)
            for block in self.blocks[:-1]:
                x = block(x, hw)
            return self._last_block(x, hw), hw
        # with_cp: the embedding, each block and the last block with the norm are segments
        # that keep only their input (one (B, N, C) map) and recompute the rest backward
        x, hw = checkpoint(self._embed, x, use_reentrant=False)
        for block in self.blocks[:-1]:
            x = checkpoint(block, x, hw, use_reentrant=False)
        return checkpoint(self._last_block, x, hw, use_reentrant=False), hw


class PyramidVisionTransformerBase(BaseModule):
    """Shared body of :class:`PVT` and :class:`PVTv2`.

    Args:
        arch: a name of the variant table (``'small'``, ``'b2'``, ...) or a dict of settings
            (``embed_dims``, ``depths``, ``num_heads``, ``sr_ratios``, ``mlp_ratios``,
            ``linear``).
        in_channels: input channels.
        pretrain_img_size: image size the v1 position embeddings are sized for.
        out_indices: stages whose maps are returned (0..3, negative counts from the end).
        F4: return only the last map (as the official code does for DETR).
        frozen_stages: freeze the first ``frozen_stages`` stages (parameters without grad,
            modules in eval mode, also after ``train()``); -1 or 0 freezes nothing.
        with_cp: activation checkpointing while training: each stage keeps only the inputs of
            its patch embedding and of its blocks, and recomputes the rest backward.
        drop_rate / attn_drop_rate / drop_path_rate: dropout after projections and position
            embedding / on attention weights / stochastic depth, spread linearly over blocks.
        qkv_bias: bias in the query/key/value projections.
        attn_mode: ``'sdpa'`` (fused, default) or ``'explicit'`` (reference softmax path).
        pretrained: deprecated shortcut for ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
        init_cfg: mmengine init config; ``type='Pretrained'`` loads official, mmdet, timm or
            pvt_mm checkpoints through :func:`pvt_mm.convert.convert_pvt_checkpoint`.
    """

    version: ClassVar[int]

    def __init__(self, arch: str | Mapping[str, Any] | PVTArch = 'small', in_channels: int = 3,
                 pretrain_img_size: int = 224, out_indices: Sequence[int] = (0, 1, 2, 3),
                 F4: bool = False, frozen_stages: int = -1, with_cp: bool = False,
                 drop_rate: float = 0., attn_drop_rate: float = 0., drop_path_rate: float = 0.1,
                 qkv_bias: bool = True, attn_mode: AttnMode = 'sdpa',
                 pretrained: str | None = None, init_cfg: dict | None = None) -> None:
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('give either pretrained or init_cfg, not both')
            warnings.warn('pretrained is deprecated; use init_cfg=dict(type="Pretrained", '
                          'checkpoint=...)', DeprecationWarning, stacklevel=2)
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)
        self.arch = resolve_arch(arch, self.version)
        self.in_channels = in_channels
        self.out_indices = self._resolve_out_indices(out_indices, F4)
        if not -1 <= frozen_stages <= NUM_STAGES:
            raise ValueError(f'frozen_stages must be in [-1, {NUM_STAGES}], got {frozen_stages}')
        self.frozen_stages = frozen_stages
        if not 0 <= drop_path_rate < 1:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')

        a, v2 = self.arch, self.version == 2
        rates = self._drop_path_rates(drop_path_rate)
        self.stages = nn.ModuleList()
        for i in range(NUM_STAGES):
            stride = STEM_STRIDE if i == 0 else STAGE_STRIDE
            grid = pretrain_img_size // (STEM_STRIDE * STAGE_STRIDE ** i)
            self.stages.append(PVTStage(
                in_channels if i == 0 else a.embed_dims[i - 1], a.embed_dims[i], a.depths[i],
                a.num_heads[i], a.sr_ratios[i], a.mlp_ratios[i], stride, overlap=v2,
                linear=a.linear, pos_grid=None if v2 else (grid, grid), drop_path=rates[i],
                drop=drop_rate, attn_drop=attn_drop_rate, qkv_bias=qkv_bias,
                attn_mode=attn_mode))
        self.with_cp = with_cp
        self._init_default_weights()
        self._freeze_stages()

    # ---- configuration -------------------------------------------------------------------
    @staticmethod
    def _resolve_out_indices(out_indices: Sequence[int], F4: bool) -> tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        idx = []
        for i in out_indices:
            if not -NUM_STAGES <= i < NUM_STAGES:
                raise ValueError(f'out_indices entry {i} is outside 0..{NUM_STAGES - 1}')
            idx.append(i % NUM_STAGES)
        if not idx or len(set(idx)) != len(idx):
            raise ValueError(f'out_indices must be non-empty and unique, got {out_indices}')
        if F4:
            if tuple(idx) not in ((0, 1, 2, 3), (NUM_STAGES - 1,)):
                raise ValueError(f'F4=True returns only the last stage; it conflicts with '
                                 f'out_indices={tuple(out_indices)}')
            return (NUM_STAGES - 1,)
        return tuple(sorted(idx))

    def _drop_path_rates(self, rate: float) -> list[list[float]]:
        """Linear 0..rate over all blocks, split per stage (the official rule)."""
        n = self.arch.total_depth  # plain Python, so building on the meta device works
        flat = [rate * i / (n - 1) if n > 1 else 0. for i in range(n)]
        out, start = [], 0
        for d in self.arch.depths:
            out.append(flat[start:start + d])
            start += d
        return out

    def reset_drop_path(self, drop_path_rate: float) -> None:
        """Re-spread stochastic depth linearly from 0 to ``drop_path_rate`` over all blocks."""
        if not 0 <= drop_path_rate < 1:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
        for stage, rates in zip(self.stages, self._drop_path_rates(drop_path_rate)):
            for block, r in zip(stage.blocks, rates):
                block.drop_path.drop_prob = r

    @property
    def with_cp(self) -> bool:
        return all(s.with_cp for s in self.stages)

    @with_cp.setter
    def with_cp(self, enabled: bool) -> None:
        for s in self.stages:
            s.with_cp = bool(enabled)

    @property
    def attn_mode(self) -> str:
        return self.stages[0].blocks[0].attn.attn_mode

    @attn_mode.setter
    def attn_mode(self, mode: str) -> None:
        """Switch every block between ``'sdpa'`` and ``'explicit'`` attention."""
        for stage in self.stages:
            for block in stage.blocks:
                block.attn.attn_mode = mode

    @property
    def out_channels(self) -> tuple[int, ...]:
        return tuple(self.arch.embed_dims[i] for i in self.out_indices)

    @property
    def min_input_size(self) -> int:
        """Smallest H and W that reach stride 32 with every reduction conv covered."""
        need = 0
        for i, sr in enumerate(self.arch.sr_ratios):
            stride = STEM_STRIDE * STAGE_STRIDE ** i
            need = max(need, stride * (1 if self.arch.linear else sr))
        return need

    # ---- weights -------------------------------------------------------------------------
    def _init_default_weights(self) -> None:
        """The official initialisation: trunc-normal linears/pos-embeds, fan-out convs."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for stage in self.stages:
            if stage.pos_embed is not None:
                trunc_normal_(stage.pos_embed, std=.02)

    def init_weights(self) -> None:
        """Load ``init_cfg=dict(type='Pretrained', checkpoint=...)`` strictly, after
        converting it from any supported layout; other init_cfgs go to mmengine."""
        cfg = self.init_cfg
        if isinstance(cfg, Mapping) and cfg.get('type') == 'Pretrained':
            from ...checkpoint import load_pretrained
            load_pretrained(self, cfg['checkpoint'], prefix=cfg.get('prefix'))
            self._is_init = True
        else:
            super().init_weights()

    # ---- training mode -------------------------------------------------------------------
    def _freeze_stages(self) -> None:
        for stage in self.stages[:max(self.frozen_stages, 0)]:
            stage.eval()
            for p in stage.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> PyramidVisionTransformerBase:
        super().train(mode)
        self._freeze_stages()
        return self

    # ---- forward -------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f'{name} expects a tensor, got {type(x).__name__}')
        if x.dim() != 4:
            raise ValueError(f'{name} expects a (B, C, H, W) batch, got shape {tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'{name} expects {self.in_channels} input channels, got '
                             f'{x.shape[1]} (shape {tuple(x.shape)})')
        if not x.is_floating_point():
            raise TypeError(f'{name} expects a floating-point image, got {x.dtype}')
        m = self.min_input_size
        if min(x.shape[-2:]) < m:
            raise ValueError(f'input {x.shape[-2]}x{x.shape[-1]} is too small for {name}: '
                             f'H and W must be at least {m} to reach stride 32')

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """x: (B, C_in, H, W) -> NCHW maps of the stages in ``out_indices`` (strides 4, 8,
        16, 32 with ``embed_dims`` channels)."""
        self._check_input(x)
        outs = []
        for i, stage in enumerate(self.stages[:self.out_indices[-1] + 1]):
            tokens, hw = stage(x)
            x = nlc_to_nchw(tokens, hw)
            if i in self.out_indices:
                outs.append(x.contiguous())
        return tuple(outs)


@MODELS.register_module()
class PVT(PyramidVisionTransformerBase):
    """PVT v1: ``arch`` in tiny / small / medium / large (or a dict). See the base class."""

    version = 1


@MODELS.register_module()
class PVTv2(PyramidVisionTransformerBase):
    """PVT v2: ``arch`` in b0 ... b5, b2_li (or a dict). See the base class."""

    version = 2


def _official_alias(name: str, arch: str) -> Any:
    cls = PVT if ARCHS[arch].version == 1 else PVTv2

    def build(**kwargs: Any) -> PyramidVisionTransformerBase:
        if 'arch' in kwargs:
            raise TypeError(f'{name} fixes arch={arch!r}; use type={cls.__name__!r} to '
                            'choose another')
        return cls(arch=arch, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f'The official ``{name}`` class name: ``{cls.__name__}(arch={arch!r})``.'
    return build


for _name, _arch in OFFICIAL_NAMES.items():
    MODELS.register_module(name=_name, module=_official_alias(_name, _arch))
