from .attention import ATTN_MODES, SpatialReductionAttention
from .block import PVTBlock
from .embed import PatchEmbed, resize_pos_embed
from .exec_path import ExecKind, ExecPath, decide_exec_path, is_graph_capture
from .mlp import DWConv, Mlp
from .shape import nchw_to_nlc, nlc_to_nchw

__all__ = ['ATTN_MODES', 'SpatialReductionAttention', 'PVTBlock', 'PatchEmbed',
           'resize_pos_embed', 'DWConv', 'Mlp', 'nchw_to_nlc', 'nlc_to_nchw', 'ExecKind',
           'ExecPath', 'decide_exec_path', 'is_graph_capture']
