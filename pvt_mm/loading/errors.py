"""What every loading module raises, at the bottom of the loading layer (no imports of its own).
"""
from __future__ import annotations

__all__ = ['CheckpointError', 'listing']


class CheckpointError(ValueError):
    """A checkpoint that does not fit: unplaceable, missing or mis-shaped keys, or a file that
    is unreadable, damaged or refused."""


def listing(keys: list[str], limit: int = 12) -> str:
    """The first ``limit`` of ``keys``, comma-separated, and how many more there are."""
    shown = ', '.join(keys[:limit])
    return shown + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')
