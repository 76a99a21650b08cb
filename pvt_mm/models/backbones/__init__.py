from .arch import ARCHS, OFFICIAL_NAMES, PVTArch, resolve_arch
from .pvt import PVT, PVTStage, PVTv2, PyramidVisionTransformerBase

__all__ = ['ARCHS', 'OFFICIAL_NAMES', 'PVTArch', 'resolve_arch', 'PVT', 'PVTv2', 'PVTStage',
           'PyramidVisionTransformerBase']
