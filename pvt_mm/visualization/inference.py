"""``tools/infer.py``: drawn predictions for images through mmdet's ``DetInferencer`` or
mmseg's ``MMSegInferencer`` (the config's ``default_scope`` picks which).

The inferencers read the checkpoint with mmengine's loader, which ``import pvt_mm`` routes
through the safe reader (:func:`pvt_mm.loading.checkpoint.use_safe_mmengine_loader`); before the
weights go in, the checkpoint's keys and shapes are compared with the model's
(:func:`pvt_mm.engine.checkpoint_io.check_model_checkpoint`), so a checkpoint of another
model stops the tool instead of drawing the predictions of random heads."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..engine import checkpoint_io
from ..engine.runtime import read_config, task_scope

__all__ = ['IMAGE_SUFFIXES', 'collect_images', 'infer']

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def collect_images(source: str | os.PathLike) -> list[str]:
    """An image file, or the images directly in a folder (sorted)."""
    import cv2
    path = Path(source)
    if path.is_file():
        images = [str(path)]
    elif path.is_dir():
        images = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in {path}')
    else:
        raise FileNotFoundError(f'image or folder not found: {path}')
    for image in images:  # reads the header only
        if os.path.getsize(image) == 0 or not cv2.haveImageReader(image):
            raise ValueError(f'{image} is not a readable image (OpenCV knows no format that '
                             'starts like this file)')
    return images


def _strict(inferencer: type, weights: str) -> type:
    """``inferencer`` whose weights go in only when the checkpoint matches the model."""
    class StrictInferencer(inferencer):
        def _load_weights_to_model(self, model: Any, checkpoint: Any, cfg: Any) -> None:
            if checkpoint is not None:
                checkpoint_io.check_model_checkpoint(model, checkpoint, weights)
            super()._load_weights_to_model(model, checkpoint, cfg)

    StrictInferencer.__name__ = inferencer.__name__
    return StrictInferencer


def infer(source: str | os.PathLike, config: str | os.PathLike,
          checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
          score_thr: float = 0.3, device: str = 'cpu', batch_size: int = 1) -> list[Path]:
    """Predict every image of ``source`` and draw the predictions into ``out_dir/vis/``
    (boxes / masks with labels and scores >= ``score_thr`` for detection, the mask overlay
    for segmentation; the stock visualizers become :mod:`.visualizers`' readable ones); predictions as JSON in ``out_dir/preds/`` (detection). Returns the
    drawn files."""
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    images = collect_images(source)
    cfg = read_config(config)
    scope = task_scope(cfg)
    from .visualizers import readable_visualizer_cfg  # in-function: imports mmdet and mmseg
    cfg.visualizer = readable_visualizer_cfg(cfg.get('visualizer'))  # the user's own stays
    out = Path(out_dir)
    if scope == 'mmdet':
        from mmdet.apis import DetInferencer
        inferencer = _strict(DetInferencer, str(checkpoint))(
            model=cfg, weights=str(checkpoint), device=device, show_progress=False)
    else:
        from mmseg.apis import MMSegInferencer
        inferencer = _strict(MMSegInferencer, str(checkpoint))(
            model=cfg, weights=str(checkpoint), device=device)
    if scope == 'mmdet':
        inferencer(images, batch_size=batch_size, out_dir=str(out), pred_score_thr=score_thr,
                   no_save_pred=False)
    else:
        inferencer(images, batch_size=batch_size, out_dir=str(out))
    drawn = [out / 'vis' / Path(p).name for p in images]
    missing = [str(p) for p in drawn if not p.is_file()]
    if missing:
        raise RuntimeError(f'the inferencer did not write {missing}')
    return drawn
