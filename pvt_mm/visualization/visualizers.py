"""mmdet's and mmseg's local visualizers, drawing pictures that stay readable on crowded images.

:class:`ReadableDetVisualizer` (a ``DetLocalVisualizer``) writes each label as ``person 87%``
and moves a label that would cover another one (the stock visualizer puts every label at its
box's corner, so overlapping boxes give unreadable stacks of text) below the labels already
placed, most confident first; labels are drawn last, over boxes and masks.
:class:`ReadableSegVisualizer` (a ``SegLocalVisualizer``) leaves the pixels of background-named
classes (``background``, ``void``, ...) as the image shows them instead of blending the class
colour (black in most palettes) over them.

``tools/infer.py`` (PyTorch and ONNX routes) and the demo's validation pictures draw with them;
a config names them by class (``visualizer = dict(type=ReadableDetVisualizer, ...)``) or they
replace the stock types via :func:`readable_visualizer_cfg`. Nothing is registered globally.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextToPath
from mmdet.visualization import DetLocalVisualizer
from mmdet.visualization.palette import _get_adaptive_scales, get_palette, jitter_color
from mmseg.visualization import SegLocalVisualizer

from .palette import is_background

__all__ = ['ReadableDetVisualizer', 'ReadableSegVisualizer', 'label_text', 'place_labels',
           'readable_visualizer_cfg']

LABEL_BOX = dict(facecolor='black', alpha=0.8, pad=0.7, edgecolor='none')
_TEXT_TO_PATH = TextToPath()


def label_text(name: str, score: float | None) -> str:
    """``person 87%`` (``person`` without a score); scores under 1% keep one decimal."""
    if score is None:
        return name
    percent = float(score) * 100
    return f'{name} {percent:.0f}%' if percent >= 1 else f'{name} {percent:.1f}%'


def place_labels(anchors: np.ndarray, sizes: Sequence[tuple[float, float]],
                 image_hw: tuple[int, int], order: Sequence[int] | None = None
                 ) -> np.ndarray:
    """Top-left corners (N, 2) for N labels of ``sizes`` (w, h) in pixels, each wanted at its
    ``anchors`` (N, 2) point (a box's top-left corner). Labels are placed in ``order`` (e.g.
    by falling score); one that would overlap a placed label moves down past it, as far as
    needed, and every label is kept inside the image where it fits."""
    height, width = image_hw
    placed: list[tuple[float, float, float, float]] = []
    out = np.zeros((len(sizes), 2), dtype=np.float64)
    for i in (range(len(sizes)) if order is None else order):
        w, h = sizes[i]
        x = float(min(max(anchors[i][0], 0.0), max(width - w, 0.0)))
        y = float(min(max(anchors[i][1], 0.0), max(height - h, 0.0)))
        moved = True
        while moved:  # each move goes below a placed label, so this ends
            moved = False
            for px, py, pw, ph in placed:
                if x < px + pw and px < x + w and y < py + ph and py < y + h:
                    y, moved = py + ph, True
        placed.append((x, y, w, h))
        out[i] = (x, y)
    return out


class ReadableDetVisualizer(DetLocalVisualizer):
    """``DetLocalVisualizer`` whose labels read ``person 87%`` and do not cover each other."""

    def _text_size(self, text: str, font_size: float) -> tuple[float, float]:
        """(w, h) in image pixels of ``text`` drawn at ``font_size`` points with its box."""
        px = font_size * self.dpi / 72
        w, h, _ = _TEXT_TO_PATH.get_text_width_height_descent(
            text, FontProperties(family='sans-serif', size=px), ismath=False)
        pad = 2 * LABEL_BOX['pad'] * self.dpi / 72
        return w + pad + 2, h + pad + 0.25 * px

    def _draw_instances(self, image: np.ndarray, instances: Any, classes: Sequence[str] | None,
                        palette: Sequence[tuple] | None) -> np.ndarray:
        """Boxes, then masks (mmdet's drawing), then the labels placed by
        :func:`place_labels`. Returns the RGB picture (H, W, 3) uint8."""
        self.set_image(image)
        labels = instances.labels if 'labels' in instances else torch.zeros(0, dtype=torch.long)
        if len(labels) == 0:
            return self.get_image()
        max_label = int(labels.max())
        has_boxes = 'bboxes' in instances and float(instances.bboxes.sum()) > 0
        masks = None
        if 'masks' in instances:
            masks = instances.masks
            masks = masks.to_ndarray() if hasattr(masks, 'to_ndarray') else np.asarray(masks)
            masks = masks.astype(bool)
        if has_boxes:
            colours = get_palette(palette if self.bbox_color is None else self.bbox_color,
                                  max_label + 1)
            self.draw_bboxes(instances.bboxes, edge_colors=[colours[int(c)] for c in labels],
                             alpha=self.alpha, line_widths=self.line_width)
        if masks is not None:
            self._draw_masks(masks, labels, palette, max_label)
        anchors, areas = self._label_anchors(instances, masks, has_boxes)
        if anchors is None:
            return self.get_image()
        scales = _get_adaptive_scales(areas)
        scores = instances.scores if 'scores' in instances else None
        texts, sizes = [], []
        for i, label in enumerate(labels.tolist()):
            name = (instances.label_names[i] if 'label_names' in instances
                    else classes[label] if classes is not None else f'class {label}')
            texts.append(label_text(name, None if scores is None else float(scores[i])))
            sizes.append(self._text_size(texts[-1], int(13 * scales[i])))
        order = (np.argsort(-np.asarray(scores, dtype=np.float64), kind='stable')
                 if scores is not None else None)
        corners = place_labels(anchors, sizes, (self.height, self.width), order)
        text_colours = get_palette(self.text_color, max_label + 1)
        for i, label in enumerate(labels.tolist()):
            self.draw_texts(texts[i], corners[i], colors=text_colours[label],
                            font_sizes=int(13 * scales[i]), bboxes=[LABEL_BOX])
        return self.get_image()

    def _draw_masks(self, masks: np.ndarray, labels: torch.Tensor,
                    palette: Sequence[tuple] | None, max_label: int) -> None:
        from mmdet.structures.mask import bitmap_to_polygon
        colours = get_palette(palette if self.mask_color is None else self.mask_color,
                              max_label + 1)
        polygons = [c for mask in masks for c in bitmap_to_polygon(mask)[0]]
        self.draw_polygons(polygons, edge_colors='w', alpha=self.alpha)
        self.draw_binary_masks(masks, colors=[jitter_color(colours[int(c)]) for c in labels],
                               alphas=self.alpha)

    def _label_anchors(self, instances: Any, masks: np.ndarray | None, has_boxes: bool
                       ) -> tuple[np.ndarray | None, np.ndarray]:
        """Where each label wants to go: the box's top-left corner inside its edge line, or
        (mask-only models) the top-left of the mask's extent; and the areas for the font."""
        if has_boxes:
            boxes = instances.bboxes.detach().cpu().numpy().astype(np.float64)
            areas = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 2] - boxes[:, 0])
            return boxes[:, :2] + self.line_width, areas
        if masks is None or not len(masks):
            return None, np.zeros(0)
        anchors, areas = [], []
        for mask in masks:
            ys, xs = np.nonzero(mask)
            anchors.append((xs.min(), ys.min()) if len(xs) else (0, 0))
            areas.append(float(len(xs)))
        return np.asarray(anchors, dtype=np.float64), np.asarray(areas)


class ReadableSegVisualizer(SegLocalVisualizer):
    """``SegLocalVisualizer`` that leaves background-named classes as the image."""

    def _draw_sem_seg(self, image: np.ndarray, sem_seg: Any, classes: Sequence[Any] | None,
                      palette: Sequence[Any] | None, *args: Any, **kwargs: Any) -> np.ndarray:
        out = super()._draw_sem_seg(image, sem_seg, classes, palette, *args, **kwargs)
        background = [i for i, name in enumerate(classes or []) if is_background(name)]
        if not background:
            return out
        keep = np.isin(sem_seg.cpu().data[0].numpy(), background)
        out = np.array(out, copy=True)
        out[keep] = image[keep]
        self.set_image(out)  # as mmseg's own _draw_sem_seg leaves its result
        return out


_READABLE = {'DetLocalVisualizer': ReadableDetVisualizer,
             'SegLocalVisualizer': ReadableSegVisualizer}


def readable_visualizer_cfg(cfg: dict | None) -> dict | None:
    """A copy of a config's ``visualizer`` dict whose stock ``DetLocalVisualizer`` /
    ``SegLocalVisualizer`` type (with or without a scope prefix) is the readable one; any other
    visualizer (the user's own) is returned unchanged."""
    if not cfg:
        return cfg
    out = dict(cfg)
    kind = out.get('type')
    if isinstance(kind, str) and kind.split('.')[-1] in _READABLE:
        out['type'] = _READABLE[kind.split('.')[-1]]
    elif kind in (DetLocalVisualizer, SegLocalVisualizer):
        out['type'] = _READABLE[kind.__name__]
    return out
