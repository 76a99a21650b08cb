from .arch import ARCHS, OFFICIAL_ALIASES, OFFICIAL_NAMES, PVTArch, arch_name, resolve_arch
from .pvt import PVT, PVTStage, PVTv2, PyramidVisionTransformerBase

__all__ = ['ARCHS', 'OFFICIAL_ALIASES', 'OFFICIAL_NAMES', 'PVTArch', 'arch_name', 'resolve_arch',
           'PVT', 'PVTv2', 'PVTStage', 'PyramidVisionTransformerBase']
