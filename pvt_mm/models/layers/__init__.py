from .attention import ATTN_MODES, SpatialReductionAttention
from .block import PVTBlock
from .embed import PatchEmbed, resize_pos_embed
from .mlp import DWConv, Mlp
from .shape import nchw_to_nlc, nlc_to_nchw

__all__ = ['ATTN_MODES', 'SpatialReductionAttention', 'PVTBlock', 'PatchEmbed',
           'resize_pos_embed', 'DWConv', 'Mlp', 'nchw_to_nlc', 'nlc_to_nchw']
