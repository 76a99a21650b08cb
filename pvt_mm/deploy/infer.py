"""The deployed model in mmdet / mmseg's world: predictions as ``DetDataSample`` /
``SegDataSample``, drawn and saved as the inferencers do (``tools/infer.py IMAGES MODEL.onnx``),
and evaluated by a config's evaluator (``tools/test.py CONFIG MODEL.onnx``)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..visualization.inference import collect_images
from .predictor import (DetPredictor, DetResult, Prepared, SegPredictor, load_predictor,
                        read_image)


def det_sample(result: DetResult, metainfo: dict | None = None) -> Any:
    """:class:`DetResult` -> mmdet ``DetDataSample`` with ``pred_instances``."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    sample = DetDataSample(metainfo=dict(metainfo or {}, ori_shape=result.ori_shape))
    pred = InstanceData(bboxes=torch.from_numpy(result.bboxes), scores=torch.from_numpy(
        result.scores), labels=torch.from_numpy(result.labels))
    if result.masks is not None:
        pred.masks = torch.from_numpy(result.masks)
    sample.pred_instances = pred
    return sample


def seg_sample(label_map: np.ndarray, metainfo: dict | None = None) -> Any:
    """(H, W) label map -> mmseg ``SegDataSample`` with ``pred_sem_seg``."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    sample = SegDataSample(metainfo=dict(metainfo or {}, ori_shape=label_map.shape))
    sample.pred_sem_seg = PixelData(data=torch.from_numpy(label_map)[None])
    return sample


def _visualizer(predictor: Any) -> Any:
    """The PyTorch route's visualizers (labels that do not cover each other, background kept)."""
    # in-function: the visualizers import mmdet and mmseg (each optional)
    from ..visualization.visualizers import ReadableDetVisualizer, ReadableSegVisualizer
    meta = dict(classes=tuple(predictor.classes), palette=[tuple(c) for c in predictor.palette])
    name = f'pvt_mm_deploy_{uuid.uuid4().hex[:8]}'  # mmengine keeps instances by name
    if predictor.task == 'det':
        vis = ReadableDetVisualizer(name=name)
        vis.dataset_meta = meta
    else:
        vis = ReadableSegVisualizer(name=name, alpha=0.8)
        vis.set_dataset_meta(meta['classes'], meta['palette'])
    return vis


def infer_onnx(source: str | os.PathLike, model: str | os.PathLike, out_dir: str | os.PathLike,
               runtime: str = 'onnxruntime', score_thr: float = 0.3) -> list[Path]:
    """``tools/infer.py`` on an end-to-end .onnx: the files mmdet's ``DetInferencer`` /
    mmseg's ``MMSegInferencer`` write for the same images, ``out_dir/vis/<image>`` drawn by the
    same visualizers, detection: ``out_dir/preds/<stem>.json`` (labels, scores, bboxes),
    segmentation: ``out_dir/pred/<00000000>_pred.png`` label maps. Returns the drawn files."""
    import mmengine
    from PIL import Image

    images = collect_images(source)
    predictor = load_predictor(model, runtime)
    vis = _visualizer(predictor)
    out = Path(out_dir)
    drawn = []
    for i, path in enumerate(images):
        image = predictor.prepare(path)
        outputs = predictor.run(image.input)
        rgb = _read_rgb(path)
        name = Path(path).name
        if isinstance(predictor, DetPredictor):
            result = predictor.postprocess(outputs, image)
            sample = det_sample(result, dict(img_path=path))
            pred = dict(labels=result.labels.tolist(), scores=result.scores.tolist(),
                        bboxes=result.bboxes.tolist())
            if result.masks is not None:  # RLE, as DetInferencer.pred2dict writes them
                from mmdet.structures.mask import encode_mask_results
                pred['masks'] = [dict(m, counts=m['counts'].decode()) if isinstance(
                    m['counts'], bytes) else m for m in encode_mask_results(result.masks)]
            mmengine.dump(pred, str(out / 'preds' / f'{Path(path).stem}.json'))
            vis.add_datasample(name, rgb, sample, draw_gt=False, pred_score_thr=score_thr,
                               out_file=str(out / 'vis' / name))
        else:
            label = predictor.postprocess(outputs, image)
            sample = seg_sample(label, dict(img_path=path))
            (out / 'pred').mkdir(parents=True, exist_ok=True)
            Image.fromarray(label.astype(np.uint8)).save(out / 'pred' / f'{i:08d}_pred.png')
            vis.add_datasample(name, rgb, sample, draw_gt=False, draw_pred=True,
                               out_file=str(out / 'vis' / name), with_labels=True)
        drawn.append(out / 'vis' / name)
    return drawn


def _read_rgb(path: str) -> np.ndarray:
    return np.ascontiguousarray(read_image(path)[:, :, ::-1])


class DeployedModel(torch.nn.Module):
    """An end-to-end .onnx as the model of a Runner's test loop: ``test_step`` takes the test
    pipeline's batch (uint8 BGR images, already resized by the config's pipeline) and returns
    ``DetDataSample`` / ``SegDataSample`` predictions in original-image coordinates."""

    def __init__(self, path: str | os.PathLike, runtime: str = 'onnxruntime',
                 precision: str = 'fp32') -> None:
        super().__init__()
        self.predictor = load_predictor(path, runtime, precision)

    def test_step(self, data: dict) -> list:
        out = []
        for image, sample in zip(data['inputs'], data['data_samples']):
            x = image.detach().float().cpu().numpy()[None]
            ori = tuple(sample.metainfo['ori_shape'][:2])
            prepared = Prepared(x, ori, tuple(sample.metainfo.get('scale_factor', (1., 1.))))
            outputs = self.predictor.run(x)
            if isinstance(self.predictor, SegPredictor):
                label = self.predictor.postprocess(outputs, prepared)
                sample.pred_sem_seg = seg_sample(label).pred_sem_seg
            else:
                sample.pred_instances = det_sample(
                    self.predictor.postprocess(outputs, prepared)).pred_instances
            out.append(sample)
        return out

    val_step = test_step
