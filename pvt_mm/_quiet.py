"""Silence the known third-party ``pkg_resources`` deprecation warnings, at tool entry points.

mmengine (``mmengine.utils.package_utils``, used to resolve ``mmdet::``/``mmseg::`` config
bases) and a few of its dependencies import setuptools' deprecated ``pkg_resources``; each
import prints a warning the user cannot act on (the pinned setuptools < 81 still ships it).
``tools/*.py`` import this module first. Only these exact messages are filtered; every other
warning is left alone, and importing the library (``import pvt_mm``) filters nothing.
"""
from __future__ import annotations

import warnings

# The messages setuptools 80.x emits (regexes matched at the start of the message).
PKG_RESOURCES_MESSAGES: tuple[str, ...] = (
    r'pkg_resources is deprecated as an API',
    r'Deprecated call to `pkg_resources\.declare_namespace',
)


def silence_pkg_resources_warnings() -> None:
    """Ignore exactly :data:`PKG_RESOURCES_MESSAGES` (idempotent)."""
    for message in PKG_RESOURCES_MESSAGES:
        warnings.filterwarnings('ignore', message=message)


silence_pkg_resources_warnings()
