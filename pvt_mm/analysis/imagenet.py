"""ImageNet-style evaluation of a timm classifier (``pvt_v1_*`` and any other timm model) on a
folder of class subfolders, through timm's own data pipeline (``create_dataset``,
``resolve_data_config``, ``create_loader``): the preprocessing of ``model.pretrained_cfg``."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import timm
import torch
from timm.data import create_dataset, create_loader, resolve_data_config
from torch import nn

__all__ = ['ClassificationResult', 'build_classifier', 'evaluate_folder']


@dataclass
class ClassificationResult:
    images: int
    top1: float  # percent
    top5: float  # percent (top-k with k = min(5, classes))
    seconds: float


def build_classifier(name: str, checkpoint: str | os.PathLike | None = None,
                     num_classes: int | None = None) -> nn.Module:
    """``timm.create_model(name)`` in eval mode, with ``checkpoint`` (official or timm layout)
    loaded strictly through the model's pretrained filter; ``num_classes`` sizes the head
    (default: the pretrained config's, 1000)."""
    kwargs = {} if num_classes is None else {'num_classes': num_classes}
    if checkpoint is None:
        return timm.create_model(name, **kwargs).eval()
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    overlay = dict(file=str(checkpoint))
    if num_classes is not None:  # the file's head has num_classes outputs: keep it
        overlay['num_classes'] = num_classes
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay,
                             **kwargs).eval()


def evaluate_folder(model: nn.Module, root: str | os.PathLike, batch_size: int = 64,
                    workers: int = 2, log_every: int = 0) -> ClassificationResult:
    """Top-1/top-5 accuracy on ``root``/<class>/<image>; class indices follow the sorted
    folder names (the ImageNet synset order for ILSVRC2012 ``val/``)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f'image folder not found: {root}')
    dataset = create_dataset('', root=str(root), split='')
    if len(dataset) == 0:
        raise ValueError(f'no images found under {root} (expected <class>/<image> files)')
    cfg = resolve_data_config({}, model=model)
    loader = create_loader(dataset, input_size=cfg['input_size'], batch_size=batch_size,
                           is_training=False, use_prefetcher=False,
                           interpolation=cfg['interpolation'], mean=cfg['mean'],
                           std=cfg['std'], crop_pct=cfg['crop_pct'],
                           crop_mode=cfg.get('crop_mode'), num_workers=workers,
                           persistent_workers=False, device=torch.device('cpu'))
    num_classes = getattr(model, 'num_classes', 0)
    k = min(5, num_classes) if num_classes else 5
    correct1 = correct5 = seen = 0
    start = time.perf_counter()
    model.eval()
    with torch.inference_mode():
        for step, (images, target) in enumerate(loader):
            topk = model(images).topk(k, dim=1).indices
            hits = topk == target[:, None]
            correct1 += hits[:, 0].sum().item()
            correct5 += hits.any(dim=1).sum().item()
            seen += len(target)
            if log_every and (step + 1) % log_every == 0:
                print(f'[{seen}/{len(dataset)}] top1 {100 * correct1 / seen:.2f}', flush=True)
    return ClassificationResult(seen, 100 * correct1 / seen, 100 * correct5 / seen,
                                time.perf_counter() - start)
