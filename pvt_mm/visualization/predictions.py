"""Pictures of a trained detector / segmentor: ground truth beside the prediction for a few
validation images (the runner's visualizer; mmdet's / mmseg's stock ones drawn by the
readable subclasses of :mod:`.visualizers`), and the loss and validation metric over training (from the
``scalars.json`` mmengine's ``LocalVisBackend`` writes)."""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from mmdet.visualization import DetLocalVisualizer
from mmseg.visualization import SegLocalVisualizer

from .visualizers import ReadableDetVisualizer, ReadableSegVisualizer

__all__ = ['draw_val_predictions', 'plot_training_curve', 'read_scalars', 'stack_images']

GRID_GAP = 4  # pixels between the rows of the combined picture


def draw_val_predictions(runner, out_dir: str | os.PathLike, num: int = 4,
                         score_thr: float = 0.3) -> list[Path]:
    """For the first ``num`` images of the runner's test set: ``<stem>.png`` with the ground
    truth (left) and the prediction (right), drawn by the runner's visualizer, plus all of
    them stacked in ``predictions.png`` (last in the list). Runs in eval mode, no grad."""
    from mmengine.dataset import pseudo_collate
    dataset = runner.test_dataloader.dataset
    visualizer = _readable(runner.visualizer)
    visualizer.dataset_meta = dataset.metainfo
    is_det = isinstance(visualizer, DetLocalVisualizer)
    extra = dict(pred_score_thr=score_thr) if is_det else {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = runner.model
    was_training = model.training
    model.eval()
    paths = []
    try:
        for i in range(min(num, len(dataset))):
            with torch.no_grad():
                sample = model.test_step(pseudo_collate([dataset[i]]))[0]
            image = cv2.imread(sample.img_path, cv2.IMREAD_COLOR)[..., ::-1]
            path = out / f'{Path(sample.img_path).stem}.png'
            visualizer.add_datasample(path.stem, np.ascontiguousarray(image), data_sample=sample,
                                      draw_gt=True, draw_pred=True, show=False,
                                      out_file=str(path), **extra)
            paths.append(path)
    finally:
        model.train(was_training)
    if paths:
        paths.append(stack_images(paths, out / 'predictions.png'))
    return paths


def _readable(visualizer: Any) -> Any:
    """The runner's visualizer, or for a stock ``DetLocalVisualizer`` / ``SegLocalVisualizer``
    a readable one (:mod:`.visualizers`) with the same settings (the user's own subclass stays)."""
    kind = {DetLocalVisualizer: ReadableDetVisualizer,
            SegLocalVisualizer: ReadableSegVisualizer}.get(type(visualizer))
    if kind is None:
        return visualizer
    readable = kind(name=f'pvt_mm_pictures_{uuid.uuid4().hex[:8]}')  # names are per process
    for key in ('bbox_color', 'text_color', 'mask_color', 'line_width', 'alpha'):
        if hasattr(visualizer, key):
            setattr(readable, key, getattr(visualizer, key))
    return readable


def stack_images(paths: Sequence[Path], dst: str | os.PathLike) -> Path:
    """Stack same-width images vertically with a white gap; returns ``dst``."""
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
    width = max(im.shape[1] for im in images)
    rows = []
    for im in images:
        pad = np.full((im.shape[0], width - im.shape[1], 3), 255, np.uint8)
        rows += [np.concatenate([im, pad], 1), np.full((GRID_GAP, width, 3), 255, np.uint8)]
    if not cv2.imwrite(str(dst), np.concatenate(rows[:-1], 0)):
        raise OSError(f'could not write {dst}')
    return Path(dst)


def read_scalars(log_dir: str | os.PathLike) -> list[dict]:
    """The records of ``<log_dir>/vis_data/scalars.json`` (one JSON object per line)."""
    files = sorted(Path(log_dir).glob('**/vis_data/scalars.json'))
    if not files:
        raise FileNotFoundError(f'no vis_data/scalars.json under {log_dir}')
    with open(files[-1]) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training_curve(records: Sequence[dict], metric: str, dst: str | os.PathLike,
                        val_step_scale: int = 1, title: str = '') -> Path:
    """Training loss (left axis) and the validation ``metric`` (right axis) against the
    iteration. Validation records carry ``step`` in epochs for epoch-based runs: pass the
    iterations per epoch as ``val_step_scale``."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    train = [(r['step'], r['loss']) for r in records if 'loss' in r and metric not in r]
    val = [(r['step'] * val_step_scale, r[metric]) for r in records if metric in r]
    if not train:
        raise ValueError('the log has no training loss records')
    fig, ax = plt.subplots(figsize=(5.2, 3.0), dpi=100)
    ax.plot(*zip(*train), color='tab:blue', lw=1.2, label='training loss')
    ax.set_xlabel('iteration')
    ax.set_ylabel('loss', color='tab:blue')
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), color='tab:red', marker='o', lw=1.5, label=f'val {metric}')
        ax2.set_ylabel(f'val {metric}', color='tab:red')
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(dst)
    plt.close(fig)
    return Path(dst)
