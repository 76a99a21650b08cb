"""Silence known third-party noise the user cannot act on, at tool entry points.

``tools/*.py`` import this module first; importing the library (``import pvt_mm``) filters
nothing. Each filter names what it drops, by message, and every other warning or log line is
left alone:

* setuptools' ``pkg_resources`` deprecation warnings (mmengine resolves ``mmdet::`` /
  ``mmseg::`` config bases through ``pkg_resources``; the pinned setuptools < 81 ships it);
* torch's ``torch.meshgrid`` indexing warning (mmdet's and mmcv's own calls: anchor and point
  generators, deformable attention);
* mmengine's registry-scope log lines (``Failed to search registry with scope ...``, ``... did
  not set import location``, ``set scope as "mmengine" ...``): the tools build mmdet / mmseg
  modules from mmengine's root registries by design, and the workaround they announce is what
  runs.
"""
from __future__ import annotations

import logging
import re
import warnings

__all__ = ['PKG_RESOURCES_MESSAGES', 'TORCH_MESSAGES', 'REGISTRY_MESSAGES', 'RegistryNoise',
           'silence_pkg_resources_warnings', 'silence']

# The messages setuptools 80.x emits (regexes matched at the start of the message).
PKG_RESOURCES_MESSAGES: tuple[str, ...] = (
    r'pkg_resources is deprecated as an API',
    r'Deprecated call to `pkg_resources\.declare_namespace',
)
TORCH_MESSAGES: tuple[str, ...] = (
    r'torch\.meshgrid: in an upcoming release, it will be required to pass the indexing',
)
# mmengine.registry.Registry's print_log warnings about scopes (searched anywhere in the line)
REGISTRY_MESSAGES: tuple[str, ...] = (
    r'Failed to search registry with scope ".*" in the ".*" registry tree',
    r'registry in \w+ did not set import location',
    r'set scope as "mmengine" when scope can not be inferred',
)


def silence_pkg_resources_warnings() -> None:
    """Ignore exactly :data:`PKG_RESOURCES_MESSAGES` (idempotent)."""
    for message in PKG_RESOURCES_MESSAGES:
        warnings.filterwarnings('ignore', message=message)


class RegistryNoise(logging.Filter):
    """Drops the log records of :data:`REGISTRY_MESSAGES`; passes every other record."""

    pattern = re.compile('|'.join(REGISTRY_MESSAGES))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(str(record.msg))


def _filter_mmengine_loggers() -> None:
    """Attach :class:`RegistryNoise` to every mmengine logger, those created later included
    (mmengine makes one per Runner)."""
    try:
        from mmengine.logging import MMLogger
    except ImportError:  # nothing to filter
        return
    if getattr(MMLogger, '_pvt_mm_quiet', False):
        return
    noise = RegistryNoise()
    for logger in list(MMLogger._instance_dict.values()):
        logger.addFilter(noise)
    original = MMLogger.__init__

    def __init__(self, *args, **kwargs) -> None:  # noqa: N807
        original(self, *args, **kwargs)
        self.addFilter(noise)

    MMLogger.__init__ = __init__
    MMLogger._pvt_mm_quiet = True


def silence() -> None:
    """Install every filter of this module (idempotent)."""
    silence_pkg_resources_warnings()
    for message in TORCH_MESSAGES:
        warnings.filterwarnings('ignore', message=message, category=UserWarning)
    _filter_mmengine_loggers()


silence()
