"""pvt_mm: PVT v1/v2 backbones registered for MMDetection and MMSegmentation.

``import pvt_mm`` (or ``custom_imports = dict(imports=['pvt_mm'])`` in a config) registers
``PVT``, ``PVTv2`` and the official class names in mmengine's root ``MODELS`` registry, which
mmdet's and mmseg's registries fall back to.
"""
from . import engine  # noqa: F401  registers DropPathWarmupHook in mmengine's HOOKS
from .convert import CheckpointError, convert_pvt_checkpoint
from .models import PVT, PVTv2
from .version import __version__

__all__ = ['PVT', 'PVTv2', 'CheckpointError', 'convert_pvt_checkpoint', '__version__']
