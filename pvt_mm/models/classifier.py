"""ImageNet classification with PVT v1 in timm, built on the detection backbone's own modules.

``import pvt_mm`` registers ``pvt_v1_tiny``, ``pvt_v1_small``, ``pvt_v1_medium``,
``pvt_v1_large`` and ``pvt_v1_huge`` (the official ``pvt_huge_v2`` settings) in timm's model
registry::

    model = timm.create_model('pvt_v1_small', pretrained=True,
                              pretrained_cfg_overlay=dict(file='pvt_small.pth'))

:class:`PVTClassifier` holds the same ``stages`` (:class:`~pvt_mm.models.backbones.PVTStage`)
as the :class:`~pvt_mm.models.backbones.PVT` backbone, and adds what the official
classification code (whai362/PVT ``classification/pvt.py``) has on top: a cls token joining
the tokens of stage 4 (before its blocks), a final LayerNorm and a linear head on the cls token.

Position embedding of the cls token: the official ``pos_embed4`` is (1, 1 + 7*7, C) with the
cls slot first. The backbone's stage 4 keeps the 7*7 grid part (its ``pos_embed``, resized to
the input as in every other stage), and the classifier keeps the cls slot as its own parameter
``cls_pos_embed`` (1, 1, C). :func:`checkpoint_filter_fn` splits official checkpoints that way,
so the same official file loads strictly into both the classifier and the detection backbone.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..arch import NUM_STAGES
from ..loading.convert import convert_pvt_checkpoint, unwrap_state_dict
from ..loading.convert_hf import classifier_parts
from ..loading.hf_folder import check_folder_variant, folder_weights
from .backbones import ARCHS, PVT
from .fast import decide_runner
from .layers import nlc_to_nchw, resize_pos_embed

__all__ = ['PVTClassifier', 'checkpoint_filter_fn', 'TIMM_NAMES']

GLOBAL_POOLS = ('token', 'avg', '')
HEAD_LN_EPS = 1e-6  # official: norm_layer=partial(nn.LayerNorm, eps=1e-6)
# timm model name -> entry of the variant table
TIMM_NAMES: dict[str, str] = {f'pvt_v1_{n}': n
                              for n in ('tiny', 'small', 'medium', 'large', 'huge')}
RELEASE_URL = 'https://github.com/whai362/PVT/releases/download/v2/pvt_{}.pth'


class PVTClassifier(nn.Module):
    """PVT v1 ImageNet classifier: backbone stages + cls token at stage 4 + norm + head.

    Args:
        arch: a v1 entry of the variant table (``'small'``, ``'huge'``, ...) or a dict.
        img_size: the size the position embeddings are sized for (other sizes are resized).
        in_chans: input channels.
        num_classes: classes of the linear head; 0 for none (``forward`` gives the features).
        global_pool: ``'token'`` (the cls token, official), ``'avg'`` (mean of the stage-4
            grid tokens) or ``''`` (no pooling: ``forward_head`` gets all tokens).
        drop_rate: dropout before the head (timm's convention).
        proj_drop_rate / attn_drop_rate / drop_path_rate: the official ``drop_rate`` (after
            projections and position embeddings), attention dropout, stochastic depth.
        qkv_bias: bias in the query/key/value projections (official: True).
    """

    def __init__(self, arch: str | Mapping[str, Any] = 'small', img_size: int = 224,
                 in_chans: int = 3, num_classes: int = 1000, global_pool: str = 'token',
                 drop_rate: float = 0., proj_drop_rate: float = 0., attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0., qkv_bias: bool = True) -> None:
        super().__init__()
        backbone = PVT(arch=arch, in_channels=in_chans, pretrain_img_size=img_size,
                       drop_rate=proj_drop_rate, attn_drop_rate=attn_drop_rate,
                       drop_path_rate=drop_path_rate, qkv_bias=qkv_bias)
        if backbone.arch.sr_ratios[-1] != 1:
            raise ValueError('the cls token joins stage 4, whose attention must not reduce '
                             f'its keys: sr_ratios[-1] must be 1, got {backbone.arch.sr_ratios}')
        self.arch = backbone.arch
        self.min_input_size = backbone.min_input_size
        self.stages = backbone.stages  # the detection backbone's modules, not a copy
        dim = self.arch.embed_dims[-1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim, eps=HEAD_LN_EPS)
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = dim
        self.global_pool = self._check_pool(global_pool)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        self.feature_info = [dict(num_chs=c, reduction=4 * 2 ** i, module=f'stages.{i}')
                             for i, c in enumerate(self.arch.embed_dims)]
        trunc_normal_(self.cls_token, std=.02)
        trunc_normal_(self.cls_pos_embed, std=.02)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=.02)
            nn.init.zeros_(self.head.bias)

    @staticmethod
    def _check_pool(global_pool: str) -> str:
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f'global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}')
        return global_pool

    # ---- timm model interface ------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {'cls_token'}  # as the official code

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r'^stages\.0\.(?:patch_embed|pos_embed)',
                    blocks=r'^stages\.(\d+)' if coarse else [
                        (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                        (r'^stages\.(\d+)\.(?:patch_embed|pos_embed)', (0,)),
                        (r'^(?:cls_token|cls_pos_embed|norm)', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every block (and patch embedding) while training."""
        for stage in self.stages:
            stage.with_cp = enable
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new (randomly initialised) head for ``num_classes`` (0: none)."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = self._check_pool(global_pool)
        ref = self.cls_token
        self.head = (nn.Linear(self.num_features, num_classes, device=ref.device,
                               dtype=ref.dtype) if num_classes > 0 else nn.Identity())
        self.head.train(self.training)

    # ---- forward -------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f'PVTClassifier expects a (B, C, H, W) batch, got '
                             f'{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}')
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(f'input {x.shape[-2]}x{x.shape[-1]} is too small: H and W must '
                             f'be at least {self.min_input_size}')

    def _last_stage(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Stage 4 with the cls token: (B, C3, H, W) map -> (B, 1 + h*w, C4) tokens, (h, w).

        Its attention does not reduce keys (sr 1) and v1 has no depthwise conv, so the blocks
        only need a map shape whose area is the token count: a 1-row map (1, 1 + h*w)."""
        stage = self.stages[NUM_STAGES - 1]
        tokens, hw = stage.patch_embed(x)
        tokens = tokens + resize_pos_embed(stage.pos_embed, stage.pos_grid, hw)
        cls = (self.cls_token + self.cls_pos_embed).expand(tokens.shape[0], -1, -1)
        tokens = stage.pos_drop(torch.cat((cls, tokens), dim=1))
        row = (1, tokens.shape[1])
        run = decide_runner(tokens, stage.patch_embed.proj.weight.dtype, owner=self)
        for block in stage.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(run.block, block, tokens, row, use_reentrant=False)
            else:
                tokens = run.block(block, tokens, row)
        return tokens, hw

    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None,
                              norm: bool = False, stop_early: bool = False,
                              output_fmt: str = 'NCHW', intermediates_only: bool = False
                              ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs as NCHW maps (strides 4, 8, 16, 32; stage 4 without its cls token,
        through the final norm if ``norm``), and unless ``intermediates_only`` the
        ``forward_features`` output too."""
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        self._check_input(x)
        take, max_index = feature_take_indices(NUM_STAGES, indices)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        intermediates = []
        for i, stage in enumerate(stages):
            if i < NUM_STAGES - 1:
                tokens, hw = stage(x)
                x = nlc_to_nchw(tokens, hw)
                if i in take:
                    intermediates.append(x.contiguous())
            else:
                tokens, hw = self._last_stage(x)
                x = self.norm(tokens)
                if i in take:
                    grid = (x if norm else tokens)[:, 1:]
                    intermediates.append(nlc_to_nchw(grid, hw).contiguous())
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop what the stages in ``indices`` do not need (timm's ``features_only``)."""
        take, max_index = feature_take_indices(NUM_STAGES, indices)
        self.stages = self.stages[:max_index + 1]
        if max_index < NUM_STAGES - 1:
            self.num_features = self.head_hidden_size = self.arch.embed_dims[max_index]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head or max_index < NUM_STAGES - 1:
            self.reset_classifier(0, '')
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, 1 + H/32 * W/32, C4) normalised tokens, cls token first."""
        self._check_input(x)
        for stage in self.stages[:NUM_STAGES - 1]:
            tokens, hw = stage(x)
            x = nlc_to_nchw(tokens, hw)
        return self.norm(self._last_stage(x)[0])

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, 1 + N, C4) tokens -> (B, num_classes) logits (``pre_logits``: (B, C4))."""
        if self.global_pool == 'token':
            x = x[:, 0]
        elif self.global_pool == 'avg':
            x = x[:, 1:].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) images -> (B, num_classes) logits."""
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module | None = None
                         ) -> dict[str, Tensor]:
    """An official whai362/PVT v1 classification checkpoint (or a pvt_mm / timm one, or
    transformers' ``PvtForImageClassification``) -> this classifier's keys: the backbone part
    through :func:`pvt_mm.convert_pvt_checkpoint` (which raises on keys it cannot place), plus
    ``cls_token``, ``norm``, ``head`` and the cls slot of ``pos_embed4`` (transformers: of
    stage 4's position embeddings) as ``cls_pos_embed``. Missing keys are left for the strict
    load to name."""
    sd = unwrap_state_dict(state_dict)
    extra = classifier_parts(sd)
    backbone = convert_pvt_checkpoint({k: v for k, v in sd.items() if k not in extra})
    return {**backbone, **extra}


def missing_weights_message(variant: str, file: str | os.PathLike) -> str:
    """What to do when ``pretrained_cfg_overlay=dict(file=...)`` names no file (timm itself
    raises an empty FileNotFoundError)."""
    arch = TIMM_NAMES[variant]
    return (f'{variant}: pretrained weights file {str(file)!r} not found (from '
            f'{os.getcwd()}); download {RELEASE_URL.format(arch)} (the official {arch} '
            'release: pvt_mm converts it) and pass its path as '
            "pretrained_cfg_overlay=dict(file='.../" + f"pvt_{arch}.pth'), or a transformers "
            'folder')


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> PVTClassifier:
    out_indices = kwargs.pop('out_indices', tuple(range(NUM_STAGES)))
    overlay = kwargs.get('pretrained_cfg_overlay') or {}
    folder = overlay.get('file')
    if pretrained and isinstance(folder, (str, os.PathLike)) and os.path.isdir(folder):
        # a transformers folder: its variant is checked, then timm reads its weights file
        spec = ARCHS[TIMM_NAMES[variant]]
        check_folder_variant(folder, spec, f'{variant} ({TIMM_NAMES[variant]})')
        kwargs['pretrained_cfg_overlay'] = {**overlay, 'file': str(folder_weights(folder))}
    elif pretrained and isinstance(folder, (str, os.PathLike)) and not os.path.exists(folder):
        raise FileNotFoundError(missing_weights_message(variant, folder))
    return build_model_with_cfg(
        PVTClassifier, variant, pretrained, arch=TIMM_NAMES[variant],
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls='getter', out_indices=out_indices), **kwargs)


def _cfg(url: str = '', **kwargs: Any) -> dict[str, Any]:
    # The official evaluation (a DeiT fork): bicubic resize of the short side to 224 / 0.875
    # = 256, centre crop 224, ImageNet mean/std.
    return {'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
            'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN,
            'std': IMAGENET_DEFAULT_STD, 'first_conv': 'stages.0.patch_embed.proj',
            'classifier': 'head', 'fixed_input_size': False, 'license': 'apache-2.0', **kwargs}


# timm looks the pretrained configs up in the registering module's ``default_cfgs``
default_cfgs = generate_default_cfgs({
    **{f'{name}.in1k': _cfg(RELEASE_URL.format(arch))
       for name, arch in TIMM_NAMES.items() if arch != 'huge'},
    'pvt_v1_huge.untrained': _cfg(),  # the official repo defines pvt_huge_v2, no weights
})


def _register(name: str) -> None:
    def create(pretrained: bool = False, **kwargs: Any) -> PVTClassifier:
        return _create(name, pretrained=pretrained, **kwargs)

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    arch = ARCHS[TIMM_NAMES[name]]
    create.__doc__ = (f'PVT v1 ``{TIMM_NAMES[name]}`` ImageNet classifier (depths '
                      f'{arch.depths}, dims {arch.embed_dims}).')
    globals()[name] = register_model(create)


for _name in TIMM_NAMES:
    _register(_name)
