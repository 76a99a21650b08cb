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

from ...arch import (ARCHS, CUSTOM_ARCH, NUM_STAGES, OFFICIAL_ALIASES, PVTArch, arch_name,
                     check_arch, resolve_arch)
from ..fast import Runner, decide_runner
from ..layers import PatchEmbed, PVTBlock, is_graph_capture, nlc_to_nchw, resize_pos_embed
from ..layers.attention import AttnMode
from ..layers.block import BLOCK_LN_EPS
from ..layers.shape import HW
from . import validation as check
from .pretrained import load_pretrained

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

    def _embed(self, x: Tensor, run: Runner) -> tuple[Tensor, HW]:
        x, hw = run.embed(self.patch_embed, x)
        if self.pos_embed is not None:
            x = self.pos_drop(x + resize_pos_embed(self.pos_embed, self.pos_grid, hw,
                                                   traced=is_graph_capture()))
        return x, hw

    def _last_block(self, x: Tensor, hw: HW, run: Runner) -> Tensor:
        x = run.block(self.blocks[-1], x, hw)
        return x if self.norm is None else self.norm(x)

    def forward(self, x: Tensor, run: Runner | None = None) -> tuple[Tensor, HW]:
        """x: (B, C_in, H, W) -> ((B, H'*W', C) tokens, (H', W')). ``run``: the backbone's
        runner (:mod:`pvt_mm.models.fast`: reference layers or the CPU fast path), decided
        here when the stage is called alone."""
        if run is None:
            run = decide_runner(x, self.patch_embed.proj.weight.dtype)
        if not (self.with_cp and torch.is_grad_enabled()):
            x, hw = self._embed(x, run)
            for block in self.blocks[:-1]:
                x = run.block(block, x, hw)
            return self._last_block(x, hw, run), hw
        # with_cp: the embedding, each block and the last block with the norm are segments
        # that keep only their input (one (B, N, C) map) and recompute the rest backward
        x, hw = checkpoint(self._embed, x, run, use_reentrant=False)
        for block in self.blocks[:-1]:
            x = checkpoint(run.block, block, x, hw, use_reentrant=False)
        return checkpoint(self._last_block, x, hw, run, use_reentrant=False), hw


class PyramidVisionTransformerBase(BaseModule):
    """Shared body of :class:`PVT` and :class:`PVTv2`.

    Args:
        arch: a name of the variant table (``'small'``, ``'b2'``, ...) or a dict of settings
            (``embed_dims``, ``depths``, ``num_heads``, ``sr_ratios``, ``mlp_ratios``,
            ``linear``); ``None`` builds the default, ``'small'`` (PVT) / ``'b2'`` (PVTv2), as
            mmdet's PVT does. ``arch_name`` keeps the
            table name (``'custom'`` for a dict).
        in_channels: input channels (a 3-channel checkpoint is adapted on load as timm does).
        pretrain_img_size: image size (int or (H, W), at least 32) the v1 position embeddings
            are sized for: stage i's grid is (H // (4 * 2**i), W // (4 * 2**i)).
        out_indices: stages whose maps are returned (0..3, negative counts from the end), in
            increasing order (``(3, 1)`` is refused: the maps come back stage by stage).
            Stages after the last one requested are not built.
        F4: return only the last map (as the official code does for DETR; all stages built).
        frozen_stages: freeze the first ``frozen_stages`` stages (parameters without grad,
            modules in eval mode, also after ``train()``); -1 or 0 freezes nothing.
        with_cp: activation checkpointing while training: each stage keeps only the inputs of
            its patch embedding and of its blocks, and recomputes the rest backward.
        drop_rate / attn_drop_rate / drop_path_rate: dropout after projections and position
            embedding / on attention weights / stochastic depth, spread linearly over blocks.
        qkv_bias: bias in the query/key/value projections.
        attn_mode: ``'sdpa'`` (fused, default) or ``'explicit'`` (reference softmax path).
        fast_kernels: on CPU, run the fast path (fused oneDNN kernels, banded MLP, tiled
            attention, native kernels) for the layers that are exactly the stock ones
            (docs/fast_path.md); False: the reference layers everywhere. Traced / exported
            graphs always take the reference layers. Can be changed later:
            ``model.fast_kernels = False``.
        pretrained: deprecated shortcut for ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
        init_cfg: mmengine init config; ``type='Pretrained'`` loads official, mmdet, timm or
            pvt_mm checkpoints through :func:`pvt_mm.loading.convert.convert_pvt_checkpoint`.
    """

    version: ClassVar[int]

    def __init__(self, arch: str | Mapping[str, Any] | PVTArch | None = None,
                 in_channels: int = 3, pretrain_img_size: int | Sequence[int] = 224,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 F4: bool = False, frozen_stages: int = -1, with_cp: bool = False,
                 drop_rate: float = 0., attn_drop_rate: float = 0., drop_path_rate: float = 0.1,
                 qkv_bias: bool = True, attn_mode: AttnMode = 'sdpa', fast_kernels: bool = True,
                 pretrained: str | None = None, init_cfg: dict | None = None) -> None:
        check.check_pretrained(pretrained)
        check.check_init_cfg(init_cfg)
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('give either pretrained or init_cfg, not both')
            warnings.warn('pretrained is deprecated; use init_cfg=dict(type="Pretrained", '
                          'checkpoint=...)', DeprecationWarning, stacklevel=2)
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)
        arch = self.default_arch if arch is None else arch
        self.arch = resolve_arch(arch, self.version)
        self.arch_name = CUSTOM_ARCH if isinstance(arch, Mapping) else arch_name(self.arch)
        self.in_channels = check.check_int('in_channels', in_channels, 1)
        self.out_indices = self._resolve_out_indices(out_indices, F4)
        self.frozen_stages = check.check_int('frozen_stages', frozen_stages, -1, NUM_STAGES)
        for name, rate in (('drop_rate', drop_rate), ('attn_drop_rate', attn_drop_rate),
                           ('drop_path_rate', drop_path_rate)):
            check.check_rate(name, rate)
        self.pretrain_img_size = check.to_hw('pretrain_img_size', pretrain_img_size,
                                             STEM_STRIDE * STAGE_STRIDE ** (NUM_STAGES - 1))

        a, v2 = self.arch, self.version == 2
        rates = self._drop_path_rates(drop_path_rate)
        self.stages = nn.ModuleList()
        # stages after the last requested one are not built: they would hold parameters
        # without gradients (DDP then needs find_unused_parameters)
        for i in range(self.out_indices[-1] + 1):
            stride = STEM_STRIDE if i == 0 else STAGE_STRIDE
            pos_grid = tuple(s // (STEM_STRIDE * STAGE_STRIDE ** i)
                             for s in self.pretrain_img_size)
            self.stages.append(PVTStage(
                in_channels if i == 0 else a.embed_dims[i - 1], a.embed_dims[i], a.depths[i],
                a.num_heads[i], a.sr_ratios[i], a.mlp_ratios[i], stride, overlap=v2,
                linear=a.linear, pos_grid=None if v2 else pos_grid, drop_path=rates[i],
                drop=drop_rate, attn_drop=attn_drop_rate, qkv_bias=qkv_bias,
                attn_mode=attn_mode))
        self.with_cp = with_cp
        self.fast_kernels = bool(fast_kernels)
        self._init_default_weights()
        self._freeze_stages()

    # ---- configuration -------------------------------------------------------------------
    @staticmethod
    def _resolve_out_indices(out_indices: Sequence[int], F4: bool) -> tuple[int, ...]:
        """Sorted unique stage indices (negative ones count from the end; F4: the last)."""
        return check.resolve_out_indices(out_indices, F4, NUM_STAGES)

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
        """Smallest H and W for which every built stage's grid covers its attention reduction,
        from the patch embeddings' real rounding (v1 floors, v2 ceils; li pools adaptively):
        v1 32, v2 29, v2-li 1 for the table's settings."""
        n = len(self.stages)
        strides = [STEM_STRIDE] + [STAGE_STRIDE] * (n - 1)
        return check.min_input_size(check.stage_geometry(
            strides, self.arch.sr_ratios[:n], overlap=self.version == 2, linear=self.arch.linear))

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
        """Load every ``dict(type='Pretrained', checkpoint=..., prefix=...)`` entry of
        ``init_cfg`` (a dict or a list) strictly, after converting it from any supported
        layout; other entries go to mmengine first (as mmengine orders them: Pretrained last)."""
        cfgs = [] if self.init_cfg is None else (
            list(self.init_cfg) if isinstance(self.init_cfg, (list, tuple)) else [self.init_cfg])
        pretrained = [c for c in cfgs if isinstance(c, Mapping) and c.get('type') == 'Pretrained']
        if not pretrained:
            super().init_weights()
            return
        others = [c for c in cfgs if not any(c is p for p in pretrained)]
        if others:
            init_cfg, self.init_cfg = self.init_cfg, others
            try:
                super().init_weights()
            finally:
                self.init_cfg = init_cfg
        for cfg in pretrained:
            load_pretrained(self, cfg['checkpoint'], prefix=cfg.get('prefix'))
        self._is_init = True

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
        """Rank, empty batch, channels, dtype (the parameters' one, or fp32/fp16/bf16 under
        autocast) and size; each failure names the value and what is allowed."""
        check.check_input(x, f'{type(self).__name__} ({self.arch_name})', self.in_channels,
                          self.min_input_size, next(self.parameters()).dtype)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """x: (B, C_in, H, W) -> NCHW maps of the stages in ``out_indices`` (strides 4, 8,
        16, 32 with ``embed_dims`` channels).

        How it runs (the reference layers, or on the CPU the fast path for their stock parts)
        is decided here once, from the device, dtype, autocast, grad mode, tracing / export
        state, hooks and ``fast_kernels`` (:mod:`pvt_mm.models.fast`). While tracing or
        exporting, the Python-side input checks are skipped (they would bake the traced size).
        """
        if not is_graph_capture():
            self._check_input(x)
        weight = self.stages[0].patch_embed.proj.weight
        run = decide_runner(x, weight.dtype, self.fast_kernels, owner=self)
        outs = []
        for i, stage in enumerate(self.stages[:self.out_indices[-1] + 1]):
            tokens, hw = stage(x, run)
            x = nlc_to_nchw(tokens, hw)
            if i in self.out_indices:
                outs.append(x.contiguous())
        return tuple(outs)


@MODELS.register_module()
class PVT(PyramidVisionTransformerBase):
    """PVT v1: ``arch`` in tiny / small / medium / large (or a dict). See the base class."""

    version = 1
    default_arch = 'small'


@MODELS.register_module()
class PVTv2(PyramidVisionTransformerBase):
    """PVT v2: ``arch`` in b0 ... b5, b2_li (or a dict). See the base class."""

    version = 2
    default_arch = 'b2'  # as mmdet's PyramidVisionTransformerV2


BACKBONES: dict[str, type[PyramidVisionTransformerBase]] = {'PVT': PVT, 'PVTv2': PVTv2}


def build_pvt(arch: str | PVTArch, **kwargs: Any) -> PyramidVisionTransformerBase:
    """The backbone of a variant-table name (``'small'``, ``'b2_li'``, an official class name
    such as ``'pvt_v2_b2'``) or of a :class:`PVTArch` (a custom one: a folder's config.json):
    ``PVT`` or ``PVTv2`` by :attr:`PVTArch.backbone_type`; kwargs go to the constructor.
    ValueError (naming the near names and the known variants) for anything else."""
    if isinstance(arch, PVTArch):
        return BACKBONES[arch.backbone_type](arch=arch, **kwargs)
    name = check_arch(arch)
    return BACKBONES[ARCHS[name].backbone_type](arch=name, **kwargs)


def _official_alias(name: str, arch: str, fixed: dict[str, Any]) -> Any:
    """A builder for the official class ``name``: ``arch`` and ``fixed`` kwargs are set."""
    cls = BACKBONES[ARCHS[arch].backbone_type]
    fixed = {'arch': arch, **fixed}
    shown = ', '.join(f'{k}={v!r}' for k, v in fixed.items())

    def build(**kwargs: Any) -> PyramidVisionTransformerBase:
        clash = sorted(k for k in kwargs if k in fixed and kwargs[k] != fixed[k]
                       or k == 'arch')
        if clash:
            raise TypeError(f'{name} fixes {shown}; got {clash[0]}={kwargs[clash[0]]!r}. Use '
                            f'type={cls.__name__!r} to choose another')
        return cls(**{**kwargs, **fixed})

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f'The official ``{name}`` class name: ``{cls.__name__}({shown})``.'
    return build


for _name, (_arch, _fixed) in OFFICIAL_ALIASES.items():
    MODELS.register_module(name=_name, module=_official_alias(_name, _arch, _fixed))
