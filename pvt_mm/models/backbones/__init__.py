from ...arch import (ARCHS, OFFICIAL_ALIASES, OFFICIAL_NAMES, PVTArch, arch_name, check_arch,
                     resolve_arch)
from .pvt import BACKBONES, PVT, PVTStage, PVTv2, PyramidVisionTransformerBase, build_pvt

# the variant table lives in pvt_mm/arch.py (a base module: the loading layer reads it too);
# its names are re-exported here for the model code's users
__all__ = ['ARCHS', 'OFFICIAL_ALIASES', 'OFFICIAL_NAMES', 'PVTArch', 'arch_name', 'check_arch',
           'resolve_arch', 'PVT', 'PVTv2', 'PVTStage', 'PyramidVisionTransformerBase',
           'build_pvt', 'BACKBONES']
