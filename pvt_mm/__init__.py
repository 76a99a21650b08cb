"""pvt_mm: PVT v1/v2 backbones registered for MMDetection and MMSegmentation.

``import pvt_mm`` (or ``custom_imports = dict(imports=['pvt_mm'])`` in a config) registers
``PVT``, ``PVTv2`` and the official class names in mmengine's root ``MODELS`` registry, which
mmdet's and mmseg's registries fall back to, and routes mmengine's local checkpoint loads
(``load_checkpoint``: mmdet's / mmseg's inferencers and ``init_detector`` / ``init_model``)
through the safe reader :func:`pvt_mm.loading.checkpoint.read_checkpoint`.
"""
from ._compat import check_versions, guard_mmpretrain_multimodal

check_versions()  # an unsupported mmengine / mmcv / mmdet / mmseg: one line (docs/install.md)
guard_mmpretrain_multimodal()  # before anything imports mmdet's models (and mmpretrain's)

from . import engine  # noqa: E402,F401  registers DropPathWarmupHook in mmengine's HOOKS
from .loading import CheckpointError, convert_pvt_checkpoint, use_safe_mmengine_loader  # noqa: E402
from .models import PVT, PVTv2  # noqa: E402
from .version import __version__  # noqa: E402

use_safe_mmengine_loader()  # mmengine's load_checkpoint reads local files through pvt_mm

__all__ = ['PVT', 'PVTv2', 'CheckpointError', 'convert_pvt_checkpoint', '__version__']
