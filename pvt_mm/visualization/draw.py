"""Turning maps into pictures: principal components to RGB, heat maps, overlays, PNG files."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from .maps import BackboneMaps

__all__ = ['pca_rgb', 'overlay', 'attention_overlay', 'colour_scale', 'display_scale',
           'titled', 'write_backbone_maps']

FEATURE_ALPHA = 0.65  # share of the feature colours over the image
ATTENTION_ALPHA = 0.55
DISPLAY_SIDE = 384  # pictures are enlarged (whole times) until their longer side reaches it
TITLE_HEIGHT = 22
BAR_WIDTH, BAR_TEXT = 14, 44  # the attention's colour scale: bar and its labels (px)


def pca_rgb(fmap: Tensor, components: int = 3) -> np.ndarray:
    """(C, h, w) map -> (h, w, 3) float32 in [0, 1]: the first principal components of the
    C-dimensional pixels as R, G, B (each stretched between its 1st and 99th percentile;
    signs fixed so that each component's largest magnitude is positive)."""
    C, h, w = fmap.shape
    x = fmap.reshape(C, h * w).T.double()
    x = x - x.mean(0)
    rgb = torch.zeros(h * w, 3, dtype=torch.float64)
    if h * w > 1 and x.abs().max() > 0:
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        proj = x @ vh[:components].T
        k = proj.shape[1]
        sign = torch.sign(proj.gather(0, proj.abs().argmax(0, keepdim=True)))
        proj = proj * torch.where(sign == 0, 1., sign)
        lo = torch.quantile(proj, 0.01, dim=0)
        hi = torch.quantile(proj, 0.99, dim=0)
        rgb[:, :k] = ((proj - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    return rgb.reshape(h, w, 3).float().numpy()


def _resize(a: np.ndarray, hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    return cv2.resize(a, (hw[1], hw[0]),
                      interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB image, (h, w, 3) colours in [0, 1] -> (H, W, 3) uint8 blend."""
    up = _resize(colours.astype(np.float32), image.shape[:2])
    out = (1 - alpha) * image.astype(np.float32) + alpha * 255 * up
    return out.clip(0, 255).astype(np.uint8)


def attention_overlay(image: np.ndarray, weights: Tensor, point: tuple[float, float]
                      ) -> np.ndarray:
    """Heat map of (h_k, w_k) attention weights (stretched from their minimum to their
    maximum), bilinearly upsampled over the (H, W, 3) RGB image, with the query point marked."""
    w = weights.float().numpy()
    w = (w - w.min()) / max(float(w.max() - w.min()), 1e-12)
    up = _resize(w.astype(np.float32), image.shape[:2])
    heat = cv2.applyColorMap((up * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    out = ((1 - ATTENTION_ALPHA) * image.astype(np.float32)
           + ATTENTION_ALPHA * heat.astype(np.float32)).clip(0, 255).astype(np.uint8)
    centre = (int(round(point[0])), int(round(point[1])))
    size = max(6, min(image.shape[:2]) // 24)
    cv2.drawMarker(out, centre, (255, 255, 255), cv2.MARKER_CROSS, size + 4, 3)
    cv2.drawMarker(out, centre, (0, 0, 0), cv2.MARKER_CROSS, size, 1)
    return np.ascontiguousarray(out)


def _write_rgb(path: Path, rgb: np.ndarray) -> Path:
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f'could not write {path}')
    return path


def display_scale(hw: tuple[int, int], min_side: int = DISPLAY_SIDE) -> int:
    """The whole-number factor that brings an image's longer side to at least ``min_side``
    (1 for images that large already)."""
    return max(1, -(-min_side // max(hw)))


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def titled(picture: np.ndarray, title: str, scale: int = 1) -> np.ndarray:
    """``picture`` ((H, W, 3) uint8 RGB) enlarged ``scale`` times (cubic) under a white strip
    holding ``title`` (shrunk to fit the width)."""
    if scale > 1:
        picture = cv2.resize(picture, (picture.shape[1] * scale, picture.shape[0] * scale),
                             interpolation=cv2.INTER_CUBIC)
    width = picture.shape[1]
    font = 0.5
    while font > 0.3 and \
            cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, font, 1)[0][0] > width - 8:
        font -= 0.05
    strip = np.full((TITLE_HEIGHT, width, 3), 255, np.uint8)
    _text(strip, title, (4, TITLE_HEIGHT - 8), font)
    return np.concatenate([strip, picture], 0)


def colour_scale(picture: np.ndarray, low: float, high: float, label: str) -> np.ndarray:
    """``picture`` with a vertical JET colour bar on its right, ``low`` at the bottom and
    ``high`` at the top (as written by :func:`attention_overlay`)."""
    H = picture.shape[0]
    ramp = np.linspace(255, 0, H).astype(np.uint8)[:, None].repeat(BAR_WIDTH, 1)
    bar = cv2.applyColorMap(ramp, cv2.COLORMAP_JET)[..., ::-1]
    side = np.full((H, BAR_WIDTH + BAR_TEXT, 3), 255, np.uint8)
    side[:, :BAR_WIDTH] = bar
    _text(side, f'{high:.3g}', (BAR_WIDTH + 3, 12), 0.35)
    _text(side, f'{low:.3g}', (BAR_WIDTH + 3, H - 4), 0.35)
    _text(side, label, (BAR_WIDTH + 3, H // 2), 0.35)
    return np.concatenate([picture, side], 1)


def write_backbone_maps(maps: BackboneMaps, image: np.ndarray, out_dir: str | os.PathLike,
                        min_side: int = DISPLAY_SIDE) -> list[Path]:
    """Write ``stage{i}_features.png``, ``stage{i}_attention.png`` and (v1)
    ``stage{i}_pos_embed.png`` for stages 1..4 from ``image`` ((H, W, 3) uint8 RGB, the image
    the maps were computed on): each picture enlarged a whole number of times until its longer
    side is at least ``min_side`` (0: as computed), under a title naming the stage, its stride,
    grid and channels; the attention with a colour scale of its weights. Returns the paths."""
    if image.shape[:2] != tuple(maps.input_hw):
        raise ValueError(f'image is {image.shape[:2]}, the maps were computed at '
                         f'{tuple(maps.input_hw)}')
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scale = display_scale(image.shape[:2], min_side) if min_side else 1
    H = image.shape[0]
    paths = []
    for i, feat in enumerate(maps.features, start=1):
        C, h, w = feat.shape
        where = f'stage {i} (1/{max(1, round(H / h))}, {h}x{w}'
        paths.append(_write_rgb(out / f'stage{i}_features.png', titled(
            overlay(image, pca_rgb(feat), FEATURE_ALPHA),
            f'{where}, {C} ch): features, 3 principal components as RGB', scale)))
        weights = maps.attention[i - 1]
        kh, kw = weights.shape
        picture = titled(attention_overlay(image, weights, maps.point),
                         f'{where}): attention of the + over {kh}x{kw} keys', scale)
        paths.append(_write_rgb(out / f'stage{i}_attention.png', colour_scale(
            picture, float(weights.min()), float(weights.max()), 'weight')))
        pos = maps.pos_embeds[i - 1]
        if pos is not None:
            paths.append(_write_rgb(out / f'stage{i}_pos_embed.png', titled(
                overlay(image, pca_rgb(pos), 1.0),
                f'{where}): position embedding, 3 principal components', scale)))
    return paths
