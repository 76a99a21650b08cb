"""pvt_mm among third-party packages: the versions it supports, and a guard for mmpretrain.

mmpretrain 1.2.0 (mmdet's ReID models import it) enables its multimodal models whenever
``transformers>=4.28`` is installed, and with transformers >= 5 their import crashes
(``TypeError: NoneType takes no arguments``: ``apply_chunking_to_forward`` moved), which takes
mmdet's ``register_all_modules`` down with it. pvt_mm uses none of those models: when
transformers >= 5 is installed and mmpretrain's models are not imported yet, mmpretrain is
told its multimodal extras are missing, so it registers its placeholders instead of crashing.

``check_versions`` checks, before anything imports them, that the installed mmengine / mmcv /
mmdet / mmseg are versions pvt_mm supports: OpenMMLab's releases or the maintained onedl-*
forks (same import names, other distribution names; docs/install.md). An unsupported one is one
line naming it.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from importlib import metadata
from pathlib import Path

# import name -> {distribution: the minor series (major, minor) pvt_mm supports}; OpenMMLab's
# release first, then the maintained fork's. Documented in docs/install.md.
SUPPORTED: dict[str, dict[str, tuple[tuple[int, int], ...]]] = {
    'mmengine': {'mmengine': ((0, 10),), 'onedl-mmengine': ((0, 10),)},
    'mmcv': {'mmcv': ((2, 0), (2, 1)), 'onedl-mmcv': ((2, 3),)},
    'mmdet': {'mmdet': ((3, 0), (3, 1), (3, 2), (3, 3)), 'onedl-mmdetection': ((3, 5),)},
    'mmseg': {'mmsegmentation': ((1, 0), (1, 1), (1, 2)), 'onedl-mmsegmentation': ((1, 4),)},
}


class UnsupportedVersionError(ImportError):
    """An installed mmengine / mmcv / mmdet / mmseg that pvt_mm does not support."""


def providing_distribution(module: str) -> tuple[str, str] | None:
    """(distribution, version) of the known distribution (:data:`SUPPORTED`) whose files
    ``import module`` would load, found without importing it; None when the module is not
    installed or no known distribution provides it (an unrelated source tree, mmcv-lite)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    origin = Path(spec.origin).resolve()
    found = []
    for name in SUPPORTED[module]:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append((name, dist.version))
        if Path(dist.locate_file(f'{module}/__init__.py')).resolve() == origin:
            return name, dist.version
    # an editable install (its files are elsewhere): the only known distribution installed
    return found[0] if len(found) == 1 else None


def unsupported_version(module: str) -> str | None:
    """One line naming ``module``'s distribution and version when pvt_mm does not support it,
    else None."""
    provided = providing_distribution(module)
    if provided is None:
        return None
    name, version = provided
    release = re.match(r'(\d+)\.(\d+)', version)
    if release and (int(release[1]), int(release[2])) in SUPPORTED[module][name]:
        return None
    supported = ' or '.join(f"{dist} {', '.join(f'{a}.{b}.x' for a, b in series)}"
                            for dist, series in SUPPORTED[module].items())
    return (f'pvt_mm does not support {name} {version} (import name {module}); supported: '
            f'{supported} (docs/install.md)')


def check_versions() -> None:
    """Raise :class:`UnsupportedVersionError` (one line) for the first installed mmengine /
    mmcv / mmdet / mmseg of an unsupported version. Missing ones pass: mmdet and mmseg are
    each optional, and a missing mmengine fails pvt_mm's own imports."""
    for module in SUPPORTED:
        problem = unsupported_version(module)
        if problem:
            raise UnsupportedVersionError(problem)


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
