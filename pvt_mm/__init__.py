"""pvt_mm: PVT v1/v2 backbones registered for MMDetection and MMSegmentation."""
from .version import __version__

__all__ = ['__version__']
