"""Test helpers for configs and whole detectors/segmentors: fast config loading, parameter
counting on the meta device, tiny synthetic batches, one real training step, and the mIoU of
saved segmentation predictions."""
from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import mmengine.config.utils as config_utils
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import Registry, init_default_scope
from mmengine.structures import InstanceData, PixelData
from torch import nn

IMAGE_SIZE = 64  # small, and a multiple of the largest stride (32)
BOXES = [[5., 10., 30., 45.], [25., 20., 60., 55.]]  # x1, y1, x2, y2
LABELS = [1, 3]


@pytest.fixture(scope='session')
def cached_config_index() -> Iterator[None]:
    """mmengine reads all ~400 metafiles of mmdet/mmseg again for every ``mmdet::`` base of
    every config it loads (about 0.4 s each); read each file once per test session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config_utils, 'load', functools.lru_cache(maxsize=None)(config_utils.load))
        yield


def models_registry(scope: str) -> Registry:
    """mmdet's or mmseg's MODELS, with that scope made the default (as their tools do)."""
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    elif scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        raise ValueError(f'expected an mmdet or mmseg config, got default_scope={scope!r}')
    return MODELS


def build_model(cfg: Config) -> nn.Module:
    """Build ``cfg.model`` on the CPU with the registry of the config's default scope."""
    return models_registry(cfg.default_scope).build(cfg.model)


def build_on_meta(cfg: Config) -> nn.Module:
    """Build ``cfg.model`` without allocating or initialising its weights (for counting)."""
    with torch.device('meta'):
        return build_model(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _image() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=g)


def _metainfo() -> dict:
    shape = (IMAGE_SIZE, IMAGE_SIZE)
    return dict(img_id=0, img_shape=shape, ori_shape=shape, pad_shape=shape,
                scale_factor=(1., 1.))


def det_batch(with_masks: bool = False) -> dict:
    """One image with two boxes (and their box-shaped masks) as mmdet's dataloader packs it."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    instances = InstanceData(bboxes=torch.tensor(BOXES), labels=torch.tensor(LABELS))
    if with_masks:
        masks = np.zeros((len(BOXES), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, BOXES):
            m[int(y1):int(y2), int(x1):int(x2)] = 1
        instances.masks = BitmapMasks(masks, IMAGE_SIZE, IMAGE_SIZE)
    sample = DetDataSample(metainfo=_metainfo())
    sample.gt_instances = instances
    return dict(inputs=[_image()], data_samples=[sample])


def seg_batch(num_classes: int, batch_size: int = 2) -> dict:
    """Images with random label maps, as mmseg's dataloader packs them (two by default:
    BatchNorm after a 1x1 pooling, as in UPerNet's PPM, needs more than one value)."""
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(1)
    samples = []
    for _ in range(batch_size):
        labels = torch.randint(0, num_classes, (1, IMAGE_SIZE, IMAGE_SIZE), generator=g)
        sample = SegDataSample(metainfo=_metainfo())
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    return dict(inputs=[_image() for _ in samples], data_samples=samples)


def train_one_step(model: nn.Module, cfg: Config, data: dict) -> tuple[float, dict[str, bool]]:
    """One ``model.train_step`` with the config's optimizer (mmengine's own path: data
    preprocessor, loss, parse_losses, update_params). Returns the loss and, per trainable
    parameter name, whether the step changed it."""
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    log_vars = model.train_step(data, optim_wrapper)
    changed = {n: not torch.equal(before[n], p.detach())
               for n, p in model.named_parameters() if n in before}
    return float(torch.as_tensor(log_vars['loss']).detach()), changed


def miou_of_saved_predictions(pred_dir: Path, gt_dir: Path, num_classes: int,
                              ignore_index: int = 255) -> float:
    """mIoU (%) of the label maps a segmentation test saved (tools/test.py ``--out``: one PNG
    per image, named as the image) against the annotation PNGs of the same names, computed here
    as mmseg's IoUMetric defines it: intersections and unions per class summed over the images,
    classes absent from both left out of the mean."""
    from PIL import Image
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    preds = sorted(Path(pred_dir).glob('*.png'))
    assert preds, f'no predictions saved in {pred_dir}'
    for path in preds:
        pred = np.asarray(Image.open(path), dtype=np.int64)
        gt = np.asarray(Image.open(Path(gt_dir) / path.name), dtype=np.int64)
        assert pred.shape == gt.shape, (path.name, pred.shape, gt.shape)
        valid = gt != ignore_index
        pred, gt = pred[valid], gt[valid]
        assert pred.max() < num_classes and gt.max() < num_classes
        hit = np.bincount(pred[pred == gt], minlength=num_classes)
        inter += hit
        union += np.bincount(pred, minlength=num_classes) + \
            np.bincount(gt, minlength=num_classes) - hit
    with np.errstate(invalid='ignore', divide='ignore'):
        return float(np.nanmean(inter / union) * 100)
