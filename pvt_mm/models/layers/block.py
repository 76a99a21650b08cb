"""A PVT transformer block: pre-norm attention and MLP, each with stochastic depth."""
from __future__ import annotations

from timm.layers import DropPath
from torch import Tensor, nn

from .attention import AttnMode, SpatialReductionAttention
from .mlp import Mlp
from .shape import HW

BLOCK_LN_EPS = 1e-6  # the official blocks use LayerNorm(eps=1e-6)


class PVTBlock(nn.Module):
    """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` on (B, N, C) tokens.

    ``drop_path`` is always a module so that :meth:`PVT.reset_drop_path` can change its rate.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int,
                 linear: bool = False, dwconv: bool = False, qkv_bias: bool = True,
                 drop: float = 0., attn_drop: float = 0., drop_path: float = 0.,
                 attn_mode: AttnMode = 'sdpa') -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_LN_EPS)
        self.attn = SpatialReductionAttention(
            dim, num_heads, sr_ratio=sr_ratio, linear=linear, qkv_bias=qkv_bias,
            attn_drop=attn_drop, proj_drop=drop, attn_mode=attn_mode)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dwconv=dwconv, extra_relu=linear, drop=drop)

    def forward(self, x: Tensor, hw: HW) -> Tensor:
        """x: (B, N, C) tokens of an (H, W) = ``hw`` map -> (B, N, C)."""
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x), hw))
