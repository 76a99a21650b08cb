"""Synthetic scenes for the built-in demo: shapes of several classes on textured backgrounds.

Each scene is drawn from its own seeded generator, so a dataset is deterministic and any image
can be regenerated alone. Objects overlap (later ones occlude earlier ones), vary in scale,
rotation, aspect and colour; a class has a typical hue but shares the colour wheel with the
others, so the shape matters, not only the colour.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

# class name -> typical hue in OpenCV units (0..180); hues are jittered per object
CLASS_HUES: dict[str, int] = {'circle': 0, 'square': 60, 'triangle': 110, 'star': 25,
                              'ring': 150}
CLASSES: tuple[str, ...] = tuple(CLASS_HUES)
HUE_JITTER = 18          # std of the per-object hue offset (OpenCV hue units)
MAX_OCCLUDED = 0.5       # an earlier object keeps at least this share of its area visible
MIN_VISIBLE_PX = 30      # objects (or visible remains) smaller than this are not placed
PLACEMENT_TRIES = 20     # random placements tried per object before giving up on it
STAR_POINTS = 5
STAR_INNER_RATIO = 0.45  # inner / outer radius of a star
RING_INNER_RATIO = 0.55  # hole / outer radius of a ring
NOISE_STD = 6.0          # pixel noise added to the final image (8-bit units)


@dataclass
class SceneSpec:
    """How scenes are drawn: image size, objects per image and their size range (pixels)."""
    size: int = 128
    min_objects: int = 2
    max_objects: int = 6
    min_scale: float = 14.0   # object diameter range, sampled log-uniformly
    max_scale: float = 56.0

    @classmethod
    def scaled(cls, size: int) -> SceneSpec:
        """The default spec at another image side; object sizes scale along."""
        base = cls()
        factor = size / base.size
        return cls(size=size, min_objects=base.min_objects, max_objects=base.max_objects,
                   min_scale=base.min_scale * factor, max_scale=base.max_scale * factor)


@dataclass
class Scene:
    """A drawn scene: ``image`` (H, W, 3) uint8 BGR; ``labels`` (N,) class indices;
    ``masks`` (N, H, W) bool visible masks (occlusion applied); ``semantic`` (H, W) uint8 with
    0 = background and ``k + 1`` for class ``k``."""
    image: np.ndarray
    labels: list[int] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    semantic: np.ndarray | None = None


def _hsv_colour(rng: np.random.Generator, hue: float) -> np.ndarray:
    hsv = np.uint8([[[int(hue) % 180, rng.integers(120, 256), rng.integers(110, 256)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background: smooth colour noise plus stripes or a checkerboard."""
    grid = rng.integers(2, 6)
    low = rng.uniform(40, 220, size=(grid, grid, 3)).astype(np.float32)
    img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:  # stripes at a random angle and period
        angle, period = rng.uniform(0, math.pi), rng.uniform(6, 24)
        wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
        img += wave[..., None] * rng.uniform(10, 35) * rng.uniform(-1, 1, size=3)
    elif kind == 1:  # checkerboard
        cell = rng.integers(6, 20)
        board = ((xx // cell + yy // cell) % 2) * 2 - 1
        img += board[..., None] * rng.uniform(8, 30) * rng.uniform(-1, 1, size=3)
    for _ in range(rng.integers(0, 4)):  # thin clutter lines
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.line(img, tuple(int(v) for v in p1), tuple(int(v) for v in p2), colour, 1,
                 cv2.LINE_AA)
    return img


def _polygon(cx: float, cy: float, radius: float, angle: float, count: int,
             inner: float | None = None, aspect: float = 1.0) -> np.ndarray:
    """Regular polygon (or star when ``inner`` is set) as an (N, 2) int32 point array."""
    steps = count * 2 if inner else count
    pts = []
    for i in range(steps):
        r = radius * (inner if inner and i % 2 else 1.0)
        a = angle + 2 * math.pi * i / steps
        pts.append((cx + r * math.cos(a) * aspect, cy + r * math.sin(a)))
    return np.round(np.array(pts)).astype(np.int32)


def _shape_mask(rng: np.random.Generator, name: str, size: int, cx: float, cy: float,
                diameter: float) -> np.ndarray:
    """Full (unoccluded) mask of one object, (size, size) uint8 in {0, 1}."""
    mask = np.zeros((size, size), np.uint8)
    radius = diameter / 2
    angle = rng.uniform(0, 2 * math.pi)
    aspect = rng.uniform(0.75, 1.0)
    centre = (int(round(cx)), int(round(cy)))
    if name == 'circle':
        axes = (int(round(radius * aspect)), int(round(radius)))
        cv2.ellipse(mask, centre, axes, math.degrees(angle), 0, 360, 1, -1)
    elif name == 'ring':
        axes = (int(round(radius)), int(round(radius)))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
        hole = (int(round(radius * RING_INNER_RATIO)),) * 2
        cv2.ellipse(mask, centre, hole, 0, 0, 360, 0, -1)
    elif name == 'square':
        cv2.fillPoly(mask, [_polygon(cx, cy, radius, angle, 4, aspect=aspect)], 1)
    elif name == 'triangle':
        cv2.fillPoly(mask, [_polygon(cx, cy, radius, angle, 3)], 1)
    elif name == 'star':
        cv2.fillPoly(mask, [_polygon(cx, cy, radius, angle, STAR_POINTS, STAR_INNER_RATIO)], 1)
    else:
        raise ValueError(f'unknown shape class {name!r}; known: {CLASSES}')
    return mask


def _paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, hue: float) -> None:
    """Fill ``mask`` in ``img`` with a shaded colour (linear gradient) and a dark outline."""
    size = img.shape[0]
    colour = _hsv_colour(rng, hue)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    shade = 1 + rng.uniform(0.1, 0.35) * ((xx * math.cos(angle) + yy * math.sin(angle))
                                          / size - 0.5)
    sel = mask.astype(bool)
    img[sel] = np.clip(colour[None] * shade[sel][:, None], 0, 255)
    if rng.random() < 0.5:
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(img, contours, -1, tuple(float(c) * 0.4 for c in colour), 1)


def draw_scene(seed: int, spec: SceneSpec = SceneSpec()) -> Scene:
    """Draw one scene from ``seed``; see :class:`Scene` for the returned arrays."""
    rng = np.random.default_rng(seed)
    size = spec.size
    img = _background(rng, size)
    full: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(rng.integers(spec.min_objects, spec.max_objects + 1)):
        label = int(rng.integers(len(CLASSES)))
        for _ in range(PLACEMENT_TRIES):
            diameter = math.exp(rng.uniform(math.log(spec.min_scale), math.log(spec.max_scale)))
            cx, cy = rng.uniform(diameter * 0.3, size - diameter * 0.3, size=2)
            mask = _shape_mask(rng, CLASSES[label], size, cx, cy, diameter)
            if mask.sum() < MIN_VISIBLE_PX:
                continue
            cover = mask.astype(bool)
            remains = [v & ~cover for v in visible]
            if all(r.sum() >= max(MIN_VISIBLE_PX, MAX_OCCLUDED * f.sum())
                   for r, f in zip(remains, full)):
                break
        else:
            continue  # no placement keeps the others visible enough: skip this object
        hue = CLASS_HUES[CLASSES[label]] + rng.normal(0, HUE_JITTER)
        _paint(rng, img, mask, hue)
        visible = remains + [cover]
        full.append(cover)
        labels.append(label)
    img = np.clip(img + rng.normal(0, NOISE_STD, img.shape), 0, 255).astype(np.uint8)
    semantic = np.zeros((size, size), np.uint8)
    for label, vis in zip(labels, visible):
        semantic[vis] = label + 1
    return Scene(image=img, labels=labels, masks=visible, semantic=semantic)
