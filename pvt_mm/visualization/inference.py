"""``tools/infer.py``: drawn predictions for images through mmdet's ``DetInferencer`` or
mmseg's ``MMSegInferencer`` (the config's ``default_scope`` picks which).

The inferencers load the checkpoint with mmengine's ``load_checkpoint`` (``torch.load``,
``weights_only=True`` on torch >= 2.6); checkpoints written by the Runner (``tools/train.py``)
hold ``HistoryBuffer`` logs, so the construction runs inside
:func:`pvt_mm.checkpoint.runner_checkpoint_globals`, which allow-lists exactly those globals
for that block only."""
from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint import runner_checkpoint_globals

__all__ = ['IMAGE_SUFFIXES', 'collect_images', 'infer']

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def collect_images(source: str | os.PathLike) -> list[str]:
    """An image file, or the images directly in a folder (sorted)."""
    path = Path(source)
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        images = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            return images
        raise FileNotFoundError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in {path}')
    raise FileNotFoundError(f'image or folder not found: {path}')


def infer(source: str | os.PathLike, config: str | os.PathLike,
          checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
          score_thr: float = 0.3, device: str = 'cpu', batch_size: int = 1) -> list[Path]:
    """Predict every image of ``source`` and draw the predictions into ``out_dir/vis/``
    (boxes / masks with labels and scores >= ``score_thr`` for detection, the mask overlay
    for segmentation); predictions as JSON in ``out_dir/preds/`` (detection). Returns the
    drawn files."""
    import pvt_mm  # noqa: F401  registers the backbones
    from ..engine.runtime import read_config, task_scope
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    images = collect_images(source)
    cfg = read_config(config)
    scope = task_scope(cfg)
    out = Path(out_dir)
    with runner_checkpoint_globals():
        if scope == 'mmdet':
            from mmdet.apis import DetInferencer
            inferencer = DetInferencer(model=cfg, weights=str(checkpoint), device=device,
                                       show_progress=False)
        else:
            from mmseg.apis import MMSegInferencer
            inferencer = MMSegInferencer(model=cfg, weights=str(checkpoint), device=device)
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
