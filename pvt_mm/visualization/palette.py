"""Class colours: a palette for classes named without one (own data, ``metainfo=dict(
classes=...)``, an exported model's metadata), readable over images."""
from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Any

__all__ = ['BACKGROUND_NAMES', 'is_background', 'make_palette', 'palette_for']

# strong, distinct colours (RGB) first; more classes take evenly spread hues
BASE_COLOURS = [(220, 20, 60), (0, 160, 0), (0, 60, 230), (250, 170, 30), (160, 0, 200),
                (0, 190, 190), (255, 110, 180), (130, 90, 40), (120, 200, 60), (250, 90, 20),
                (90, 60, 160), (0, 120, 120), (200, 200, 0), (70, 130, 180), (190, 60, 100),
                (100, 100, 100)]
BACKGROUND_NAMES = ('background', 'bg', '_background_', 'unlabeled', 'unlabelled', 'void',
                    'others')
BACKGROUND_COLOUR = (64, 64, 64)


def is_background(name: Any) -> bool:
    """Whether a class name means "no object" (``background``, ``bg``, ``void``, ...)."""
    return str(name).strip().lower() in BACKGROUND_NAMES


def make_palette(classes: Sequence[Any]) -> list[tuple[int, int, int]]:
    """One RGB colour per class: distinct strong colours, never black; a background-named
    class (:func:`is_background`) gets dark grey. Deterministic."""
    out = []
    for i, name in enumerate(classes):
        if is_background(name):
            out.append(BACKGROUND_COLOUR)
        elif i < len(BASE_COLOURS):
            out.append(BASE_COLOURS[i])
        else:  # golden-ratio hue steps, alternating brightness
            r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75,
                                          0.95 if i % 2 else 0.7)
            out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


def palette_for(classes: Sequence[Any], palette: Sequence[Sequence[int]] | None
                ) -> list[list[int]]:
    """``palette`` as lists of ints when it has a colour per class, else :func:`make_palette`
    (a config naming its classes without a palette, mmdet's usual way)."""
    if palette and len(palette) >= len(classes):
        return [list(map(int, c)) for c in palette]
    return [list(c) for c in make_palette(classes)]
