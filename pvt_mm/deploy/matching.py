"""Parity of deployed predictions with PyTorch's: detections matched both ways, masks, pixels."""
from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4), (M, 4) x1 y1 x2 y2 -> (N, M) IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-12)


def matched(a: dict, b: dict, top: int = 100, iou: float = 0.99, score_tol: float = 1e-3
            ) -> tuple[float, np.ndarray]:
    """Share of ``a``'s top-``top`` detections (dicts of ``bboxes`` (N, 4), ``scores``,
    ``labels`` numpy arrays, highest score first) with a partner in ``b``: same label, box
    IoU > ``iou``, |score difference| < ``score_tol``; and for each of them the partner's index
    in ``b`` (-1: none). 1.0 when ``a`` is empty and ``b`` too."""
    n = min(top, len(a['scores']))
    partner = np.full(n, -1)
    if n == 0:
        return float(len(b['scores']) == 0), partner
    if len(b['scores']):
        ious = box_iou(a['bboxes'][:n], b['bboxes'])
        ok = ((a['labels'][:n, None] == b['labels'][None]) & (ious > iou)
              & (np.abs(a['scores'][:n, None] - b['scores'][None]) < score_tol))
        partner = np.where(ok.any(1), np.where(ok, ious, -1).argmax(1), -1)
    return float((partner >= 0).mean()), partner


def detection_parity(a: dict, b: dict, top: int = 100) -> float:
    """min of :func:`matched` both directions."""
    return min(matched(a, b, top)[0], matched(b, a, top)[0])


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1.0 if both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1. if union == 0 else float(np.logical_and(a, b).sum() / union)


def pixel_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of equal pixels of two label maps of one shape."""
    if a.shape != b.shape:
        raise ValueError(f'label maps of shapes {a.shape} and {b.shape}')
    return float((a == b).mean())
