"""The PVT layers as reference computations (timm-style modules, one screen each).

Their CPU speed-ups are in :mod:`pvt_mm.models.fast`, which these modules never import."""
from .attention import ATTN_MODES, SpatialReductionAttention
from .block import PVTBlock
from .embed import PatchEmbed, resize_pos_embed
from .mlp import DWConv, Mlp
from .shape import nchw_to_nlc, nlc_to_nchw
from .tracing import is_graph_capture

__all__ = ['ATTN_MODES', 'SpatialReductionAttention', 'PVTBlock', 'PatchEmbed',
           'resize_pos_embed', 'DWConv', 'Mlp', 'nchw_to_nlc', 'nlc_to_nchw',
           'is_graph_capture']
