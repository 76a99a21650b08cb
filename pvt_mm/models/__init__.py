from . import classifier  # noqa: F401  registers pvt_v1_* in timm's model registry
from .backbones import PVT, PVTv2

__all__ = ['PVT', 'PVTv2']
