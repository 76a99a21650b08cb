"""What a PVT backbone computes for one image, as maps over the image grid.

* each stage's output feature map;
* the spatial-reduction attention of one query point in each stage (heads averaged) over the
  stage's key grid: the reduced map (sr > 1: the (H/sr, W/sr) grid of the reduction conv;
  PVTv2-li: the 7x7 pooled grid; sr 1: the stage grid itself);
* v1: each stage's position embedding, resized to the stage grid as the forward does.

Nothing of the forward is copied: while the backbone runs, a forward pre-hook on the chosen
block's attention module records exactly what the attention receives (the normalised tokens
and the map size) and a forward hook on each stage's last block records the stage's tokens.
The attention weights are then recomputed with the module's own ``q``, ``kv`` and ``reduce``:
``softmax(q k^T * scale)`` for the query token only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..models.layers import resize_pos_embed
from ..models.layers.shape import nlc_to_nchw

__all__ = ['BackboneMaps', 'backbone_maps', 'query_attention', 'query_index']

HW = tuple[int, int]


@dataclass
class BackboneMaps:
    """Per stage (index 0..3): ``features`` (C, h, w); ``attention`` (h_k, w_k) summing to 1;
    ``query_cells`` the (row, col) of the query token in the stage grid; ``pos_embeds``
    (C, h, w) or None (v2)."""

    input_hw: HW
    point: tuple[float, float]
    features: list[Tensor] = field(default_factory=list)
    attention: list[Tensor] = field(default_factory=list)
    query_cells: list[tuple[int, int]] = field(default_factory=list)
    pos_embeds: list[Tensor | None] = field(default_factory=list)


def query_index(point: tuple[float, float], input_hw: HW, grid: HW) -> tuple[int, int]:
    """(x, y) pixel of an ``input_hw`` image -> (row, col) of the ``grid`` cell holding it."""
    x, y = point
    H, W = input_hw
    if not (0 <= x < W and 0 <= y < H):
        raise ValueError(f'query point ({x}, {y}) is outside the {W}x{H} image '
                         f'(x must be in [0, {W}), y in [0, {H}))')
    return min(int(y * grid[0] / H), grid[0] - 1), min(int(x * grid[1] / W), grid[1] - 1)


def _key_grid(attn: nn.Module, hw: HW, num_keys: int) -> HW:
    """The (h_k, w_k) grid of the reduced keys: the li pool's size, else the strided grid
    (H // s, W // s) with as many cells as keys."""
    pool = getattr(attn, 'pool', None)
    if pool is not None:
        size = pool.output_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if size[0] * size[1] == num_keys:
            return size
    H, W = hw
    for s in range(1, max(H, W) + 1):
        if (H // s) * (W // s) == num_keys:
            return H // s, W // s
    raise ValueError(f'{num_keys} keys do not form a reduced grid of the {H}x{W} map')


@torch.no_grad()
def query_attention(attn: nn.Module, x: Tensor, hw: HW, index: int) -> tuple[Tensor, HW]:
    """Attention weights of token ``index`` of ``x`` (1, N, C), recomputed with the module's
    own projections and reduction: softmax(q k^T * scale) per head, averaged over heads.

    Returns (h_k, w_k) weights over the key grid and that grid."""
    B, N, C = x.shape
    heads = attn.num_heads
    q = attn.q(x[:, index:index + 1]).reshape(B, heads, 1, C // heads)
    kv = attn.kv(attn.reduce(x, hw))
    M = kv.shape[1]
    k = kv[..., :C].reshape(B, M, heads, C // heads).transpose(1, 2)  # (B, heads, M, d)
    weights = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)  # (B, heads, 1, M)
    grid = _key_grid(attn, hw, M)
    return weights[0, :, 0].float().mean(0).reshape(grid), grid


class _StageProbe:
    """Hooks on one stage's chosen block: records the attention input and the stage output."""

    def __init__(self, stage: nn.Module, block: int) -> None:
        self.stage = stage
        self.block = stage.blocks[block]
        self.attn_input: tuple[Tensor, HW] | None = None
        self.block_input_hw: HW | None = None
        self.output: tuple[Tensor, HW] | None = None
        self.handles = [
            self.block.attn.register_forward_pre_hook(self._on_attention, with_kwargs=True),
            stage.blocks[-1].register_forward_hook(self._on_last_block, with_kwargs=True)]

    @staticmethod
    def _x_hw(args: tuple, kwargs: dict[str, Any]) -> tuple[Tensor, HW]:
        x = args[0] if args else kwargs['x']
        hw = args[1] if len(args) > 1 else kwargs['hw']
        return x, (int(hw[0]), int(hw[1]))

    def _on_attention(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x, hw = self._x_hw(args, kwargs)
        self.attn_input = (x.detach(), hw)

    def _on_last_block(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        _, hw = self._x_hw(args, kwargs)
        tokens = out[0] if isinstance(out, tuple) else out
        self.output = (tokens.detach(), hw)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _pca_ready(tokens: Tensor, hw: HW) -> Tensor:
    """(1, N, C) tokens -> (C, h, w) float map."""
    return nlc_to_nchw(tokens.float(), hw)[0].contiguous()


@torch.no_grad()
def backbone_maps(backbone: nn.Module, image: Tensor, point: tuple[float, float] | None = None,
                  block: int = -1) -> BackboneMaps:
    """Run ``backbone`` (a PVT/PVTv2 with ``stages``) on ``image`` (1, 3, H, W), normalised,
    and collect the maps of every stage.

    Args:
        point: (x, y) query pixel of ``image``; default its centre.
        block: which block's attention to show in each stage (default the last).
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f'expects one image as a (1, 3, H, W) tensor, got {tuple(image.shape)}')
    H, W = image.shape[-2:]
    point = (W / 2, H / 2) if point is None else (float(point[0]), float(point[1]))
    query_index(point, (H, W), (1, 1))  # checks the point lies on the image
    stages = list(backbone.stages)
    for i, stage in enumerate(stages):
        if not -len(stage.blocks) <= block < len(stage.blocks):
            raise ValueError(f'block {block} does not exist in stage {i + 1} '
                             f'({len(stage.blocks)} blocks)')
    probes = [_StageProbe(stage, block) for stage in stages]
    was_training = backbone.training
    backbone.eval()
    try:
        backbone(image)
    finally:
        backbone.train(was_training)
        for p in probes:
            p.remove()
    maps = BackboneMaps((H, W), point)
    for stage, probe in zip(stages, probes):
        if probe.output is None or probe.attn_input is None:
            raise RuntimeError('the backbone did not run all of its stages (out_indices?)')
        tokens, hw = probe.output
        norm = getattr(stage, 'norm', None)
        if norm is not None:
            tokens = norm(tokens)
        maps.features.append(_pca_ready(tokens, hw))
        x, attn_hw = probe.attn_input
        cell = query_index(point, (H, W), attn_hw)
        weights, _ = query_attention(probe.block.attn, x, attn_hw, cell[0] * attn_hw[1] + cell[1])
        maps.attention.append(weights)
        maps.query_cells.append(cell)
        pos = getattr(stage, 'pos_embed', None)
        if pos is None:
            maps.pos_embeds.append(None)
        else:
            grid = stage.pos_grid or (math.isqrt(pos.shape[1]),) * 2
            maps.pos_embeds.append(_pca_ready(resize_pos_embed(pos, grid, hw), hw))
    return maps
