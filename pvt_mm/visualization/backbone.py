"""``tools/visualize.py``: a backbone (from an arch name or an mmdet/mmseg config, optionally
with a checkpoint), an image, and the pictures of :mod:`.maps` / :mod:`.draw`."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from mmengine.registry import MODELS
from torch import Tensor, nn

from ..arch import ARCHS, check_arch
from ..engine.runtime import read_config
from ..models.backbones import PyramidVisionTransformerBase
from ..models.backbones.pretrained import load_pretrained
from .draw import write_backbone_maps
from .maps import backbone_maps

__all__ = ['build_backbone', 'load_image', 'visualize_backbone']

# ImageNet RGB statistics (0-255), as every PVT config's data_preprocessor
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def build_backbone(arch: str | None = None, config: str | os.PathLike | None = None,
                   checkpoint: str | os.PathLike | None = None) -> nn.Module:
    """A PVT backbone from ``arch`` (``'small'``, ``'b2'``, ``'b2_li'``, official names) or
    from ``config``'s ``model.backbone``; ``checkpoint`` (official, timm, mmdet, or a whole
    detector/segmentor checkpoint: its ``backbone.`` keys) is loaded strictly. Without one
    the weights are random, with a warning."""
    if (arch is None) == (config is None):
        raise ValueError('give exactly one of arch or config')
    if config is not None:
        cfg = read_config(config)
        spec = dict(cfg.model.backbone)
        spec.pop('init_cfg', None)  # nothing is loaded but the given checkpoint
        spec.pop('pretrained', None)
    else:
        name = check_arch(arch)
        spec = dict(type=ARCHS[name].backbone_type, arch=name)
    spec.update(out_indices=(0, 1, 2, 3), drop_path_rate=0.)
    spec.pop('F4', None)
    backbone = MODELS.build(spec)
    if not isinstance(backbone, PyramidVisionTransformerBase):
        raise ValueError(f'the backbone is {type(backbone).__name__}; these pictures need a '
                         'pvt_mm PVT or PVTv2 backbone')
    if checkpoint is None:
        warnings.warn('no checkpoint given: the backbone has random weights, so the pictures '
                      'show an untrained network', UserWarning, stacklevel=2)
    else:
        load_pretrained(backbone, checkpoint)
    return backbone.eval()


def load_image(path: str | os.PathLike, size: int | None = None, min_size: int = 32
               ) -> tuple[np.ndarray, Tensor]:
    """Read an image -> ((H, W, 3) uint8 RGB, (1, 3, H, W) normalised tensor). ``size``
    scales the longer side to it; the shorter side is scaled up to ``min_size`` if smaller."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f'cannot read image {path}')
    h, w = bgr.shape[:2]
    scale = size / max(h, w) if size else 1.0
    scale = max(scale, min_size / min(h, w))
    if scale != 1.0:
        bgr = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                         interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    x = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return rgb, x[None]


def visualize_backbone(image: str | os.PathLike, out_dir: str | os.PathLike,
                       arch: str | None = None, config: str | os.PathLike | None = None,
                       checkpoint: str | os.PathLike | None = None,
                       point: tuple[float, float] | None = None, size: int | None = None,
                       block: int = -1, backbone: nn.Module | None = None) -> list[Path]:
    """Write the feature, attention and (v1) position-embedding pictures of every stage for
    ``image``; ``point`` is an (x, y) pixel of the image as given (before ``size``)."""
    if backbone is None:
        backbone = build_backbone(arch, config, checkpoint)
    rgb, x = load_image(image, size, getattr(backbone, 'min_input_size', 32))
    if point is not None:
        raw = cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
        sy, sx = rgb.shape[0] / raw.shape[0], rgb.shape[1] / raw.shape[1]
        if not (0 <= point[0] < raw.shape[1] and 0 <= point[1] < raw.shape[0]):
            raise ValueError(f'--point {point[0]} {point[1]} is outside the '
                             f'{raw.shape[1]}x{raw.shape[0]} image')
        point = (point[0] * sx, point[1] * sy)
    maps = backbone_maps(backbone, x, point, block)
    return write_backbone_maps(maps, rgb, out_dir)
