"""Patch embedding and position-embedding resizing."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .shape import HW, nchw_to_nlc


class PatchEmbed(nn.Module):
    """Strided conv + LayerNorm: (B, C_in, H, W) map -> (B, N, C) tokens and their (H', W').

    v1 uses non-overlapping patches (``kernel_size == stride``, no padding: sizes floor);
    v2 overlapping ones (``kernel_size = 2 * stride - 1``, ``padding = kernel_size // 2``:
    sizes ceil). The norm keeps PyTorch's default eps (1e-5) as in the official code.
    """

    def __init__(self, in_channels: int, embed_dim: int, kernel_size: int, stride: int,
                 padding: int = 0) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size, stride, padding)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, HW]:
        x, hw = nchw_to_nlc(self.proj(x))
        return self.norm(x), hw


def resize_pos_embed(pos_embed: Tensor, src_hw: HW, dst_hw: HW, traced: bool = False
                     ) -> Tensor:
    """(1, h*w, C) embedding of an ``src_hw`` grid -> (1, H*W, C) for ``dst_hw`` (bilinear,
    ``align_corners=False``, as the official code); returned unchanged when the sizes agree.

    ``traced``: always interpolate (``dst_hw`` read from a traced tensor's shape), so a traced
    or exported graph resizes to each input's grid instead of keeping the traced size's."""
    if not traced and tuple(src_hw) == tuple(dst_hw):
        return pos_embed
    C = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, *src_hw, C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=dst_hw, mode='bilinear', align_corners=False)
    return grid.flatten(2).transpose(1, 2)
