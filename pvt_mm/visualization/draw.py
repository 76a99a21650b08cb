"""Turning maps into pictures: principal components to RGB, heat maps, overlays, PNG files."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from .maps import BackboneMaps

__all__ = ['pca_rgb', 'overlay', 'attention_overlay', 'write_backbone_maps']

FEATURE_ALPHA = 0.65  # share of the feature colours over the image
ATTENTION_ALPHA = 0.55


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


def write_backbone_maps(maps: BackboneMaps, image: np.ndarray, out_dir: str | os.PathLike
                        ) -> list[Path]:
    """Write ``stage{i}_features.png``, ``stage{i}_attention.png`` and (v1)
    ``stage{i}_pos_embed.png`` for stages 1..4, each the size of ``image`` ((H, W, 3) uint8
    RGB, the image the maps were computed on). Returns the paths."""
    if image.shape[:2] != tuple(maps.input_hw):
        raise ValueError(f'image is {image.shape[:2]}, the maps were computed at '
                         f'{tuple(maps.input_hw)}')
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, feat in enumerate(maps.features, start=1):
        paths.append(_write_rgb(out / f'stage{i}_features.png',
                                overlay(image, pca_rgb(feat), FEATURE_ALPHA)))
        paths.append(_write_rgb(out / f'stage{i}_attention.png',
                                attention_overlay(image, maps.attention[i - 1], maps.point)))
        pos = maps.pos_embeds[i - 1]
        if pos is not None:
            paths.append(_write_rgb(out / f'stage{i}_pos_embed.png',
                                    overlay(image, pca_rgb(pos), 1.0)))
    return paths
