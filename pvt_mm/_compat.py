"""Keep a third-party incompatibility from breaking the tools.

mmpretrain 1.2.0 (mmdet's ReID models import it) enables its multimodal models whenever
``transformers>=4.28`` is installed, and with transformers >= 5 their import crashes
(``TypeError: NoneType takes no arguments``: ``apply_chunking_to_forward`` moved), which takes
mmdet's ``register_all_modules`` down with it. pvt_mm uses none of those models: when
transformers >= 5 is installed and mmpretrain's models are not imported yet, mmpretrain is
told its multimodal extras are missing, so it registers its placeholders instead of crashing.
"""
from __future__ import annotations

import sys
from importlib import metadata


def guard_mmpretrain_multimodal() -> bool:
    """Returns True when the guard was applied."""
    if 'mmpretrain.models' in sys.modules:
        return False
    try:
        major = int(metadata.version('transformers').split('.')[0])
        metadata.version('mmpretrain')
    except (metadata.PackageNotFoundError, ValueError):
        return False
    if major < 5:
        return False
    import mmpretrain.utils.dependency as dependency
    dependency.WITH_MULTIMODAL = False
    return True
