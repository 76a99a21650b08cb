"""Pictures: what a PVT backbone computes (:mod:`.maps`, :mod:`.draw`, :mod:`.backbone`) and
what a trained detector / segmentor predicts (:mod:`.predictions`)."""
from .backbone import build_backbone, load_image, visualize_backbone
from .draw import attention_overlay, overlay, pca_rgb, write_backbone_maps
from .maps import BackboneMaps, backbone_maps, query_attention, query_index

__all__ = ['BackboneMaps', 'attention_overlay', 'backbone_maps', 'build_backbone', 'load_image',
           'overlay', 'pca_rgb', 'query_attention', 'query_index', 'visualize_backbone',
           'write_backbone_maps']
