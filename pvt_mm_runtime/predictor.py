"""Predictors over an end-to-end .onnx (``tools/export_onnx.py --end2end``): numpy, OpenCV and
the runtime; no PyTorch, no config (everything comes from the file's metadata).

    from pvt_mm_runtime import load_predictor    # or pvt_mm.deploy.predictor (same objects)
    predictor = load_predictor('atss.onnx', 'onnxruntime')   # or 'openvino'
    result = predictor('image.jpg')   # detection: bboxes (N, 4), scores (N,), labels (N,)
                                      # segmentation: label_map (H, W)

The predictor reproduces the config's test pipeline outside the graph: the image read as mmcv
reads it (BGR), the test ``Resize`` (cv2 bilinear, mmcv's keep-ratio rounding); boxes come
back in the original image's pixels (divided by the resize's scale factors, as mmdet's
``rescale=True``). One image per call: the graph's batch is 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checks import check_image_file, check_model_file, checked_metadata, runtime_error
from .metadata import METADATA_KEY, read_metadata  # noqa: F401  (re-exported)
from .runtimes import RuntimeModel


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 BGR, as mmcv's ``imfrombytes`` (cv2 backend) decodes it."""
    import cv2
    check_image_file(path)  # its size from the header, before decoding
    try:
        image = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise ValueError(f'{path} is not a readable image (OpenCV: '
                         f'{str(e).strip().splitlines()[-1][:120]})') from None
    if image is None:
        raise ValueError(f'{path} is not a readable image')
    return image


def resized_size(width: int, height: int, resize: dict | None) -> tuple[int, int]:
    """(new width, new height) of mmcv's ``Resize`` (``imrescale`` with keep_ratio: the scale's
    long / short sides bound the image's, sizes rounded half up)."""
    if not resize:
        return width, height
    scale = resize['scale']
    if not resize['keep_ratio']:
        return int(scale[0]), int(scale[1])
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def _interp_matrix(coords: np.ndarray, size: int) -> np.ndarray:
    """(len(coords), size) bilinear weights of sampling a length-``size`` signal at pixel
    ``coords``, zero outside (``grid_sample`` with zeros padding, separably)."""
    lo = np.floor(coords).astype(np.int64)
    frac = (coords - lo).astype(np.float32)
    out = np.zeros((len(coords), size), np.float32)
    rows = np.arange(len(coords))
    for idx, w in ((lo, 1 - frac), (lo + 1, frac)):
        ok = (idx >= 0) & (idx < size)
        out[rows[ok], idx[ok]] += w[ok]
    return out


def paste_masks(masks: np.ndarray, boxes: np.ndarray, height: int, width: int,
                threshold: float = 0.5) -> np.ndarray:
    """Low-resolution mask probabilities (N, m, m) into (N, height, width) boolean masks, as
    mmdet's ``_do_paste_mask`` on CPU: each mask bilinearly resampled (``grid_sample``,
    align_corners=False, zeros outside) over its box at pixel centres, within the box's
    pixels +- 1, then ``>= threshold``."""
    out = np.zeros((len(masks), height, width), bool)
    for k, (mask, (x0, y0, x1, y1)) in enumerate(zip(masks, boxes)):
        xa, ya = max(int(np.floor(min(x0, x1))) - 1, 0), max(int(np.floor(min(y0, y1))) - 1, 0)
        xb, yb = min(int(np.ceil(x1)) + 1, width), min(int(np.ceil(y1)) + 1, height)
        if xb <= xa or yb <= ya:
            continue
        mh, mw = mask.shape
        with np.errstate(divide='ignore', invalid='ignore'):
            gx = ((np.arange(xa, xb, dtype=np.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1)
            gy = ((np.arange(ya, yb, dtype=np.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1)
        gx[np.isinf(gx)], gy[np.isinf(gy)] = 0, 0
        ix, iy = ((gx + 1) * mw - 1) / 2, ((gy + 1) * mh - 1) / 2  # align_corners=False
        region = _interp_matrix(iy, mh) @ mask.astype(np.float32) @ _interp_matrix(ix, mw).T
        out[k, ya:yb, xa:xb] = region >= threshold
    return out


@dataclass
class Prepared:
    """An image ready for the graph: (1, 3, h, w) float32 and the resize's scale factors."""

    input: np.ndarray
    ori_shape: tuple[int, int]
    scale_factor: tuple[float, float] = (1., 1.)  # (w_scale, h_scale)


@dataclass
class DetResult:
    """Detections in the original image's pixels, highest score first."""

    bboxes: np.ndarray  # (N, 4) x1 y1 x2 y2
    scores: np.ndarray  # (N,)
    labels: np.ndarray  # (N,) int64
    masks: np.ndarray | None = None  # (N, H, W) bool, instance segmentation only
    ori_shape: tuple[int, int] = (0, 0)
    extra: dict = field(default_factory=dict)


class Predictor:
    """Common part: metadata, runtime, test resize."""

    task = ''

    def __init__(self, path: str | Path, runtime: str = 'onnxruntime', precision: str = 'fp32',
                 threads: int | None = None) -> None:
        self.path = Path(path)
        self.meta = checked_metadata(path)
        check_model_file(path)
        if self.meta['task'] != self.task:
            raise ValueError(f"{path} is a {self.meta['task']} model, not {self.task}")
        self.classes: list[str] = self.meta['classes']
        self.palette: list[list[int]] = self.meta['palette']
        try:
            self.model = RuntimeModel(path, runtime, precision, threads)
        except ValueError:  # an unknown runtime / precision name
            raise
        except Exception as e:  # noqa: BLE001  the runtimes' own error types: one line
            raise runtime_error(path, runtime, e) from None

    def prepare(self, image: str | Path | np.ndarray) -> Prepared:
        """Read (a path) and resize (the config's test resize) one BGR image."""
        import cv2
        if not isinstance(image, np.ndarray):
            image = read_image(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f'expected one (H, W, 3) image, got shape {image.shape} (the graph '
                             'takes batch 1: call the predictor once per image)')
        h, w = image.shape[:2]
        new_w, new_h = resized_size(w, h, self.meta.get('test_resize'))
        if self.meta.get('test_resize'):  # as mmcv's Resize (a copy at the same size)
            image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
        return Prepared(x, (h, w), (new_w / w, new_h / h))

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """The graph on a prepared (1, 3, h, w) input."""
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f'end-to-end graphs take one image (batch 1), got input shape '
                             f'{tuple(x.shape)}: run images one at a time')
        return self.model(x)


class DetPredictor(Predictor):
    """Detection: ``predictor(image)`` -> :class:`DetResult`."""

    task = 'det'

    def postprocess(self, outputs: list[np.ndarray], prepared: Prepared) -> DetResult:
        num, boxes, scores, labels = outputs[:4]
        n = int(num.reshape(-1)[0])
        w_scale, h_scale = prepared.scale_factor
        # mmdet's rescale: boxes * (1 / scale factor)
        boxes = boxes[0, :n] * np.array([1 / w_scale, 1 / h_scale] * 2, np.float32)
        masks = None
        if len(outputs) > 4:  # Mask R-CNN: pasted at the original size, as mmdet does
            masks = paste_masks(outputs[4][0, :n], boxes, *prepared.ori_shape,
                                self.meta.get('mask_thr_binary') or 0.5)
        return DetResult(boxes.astype(np.float32), scores[0, :n], labels[0, :n].astype(np.int64),
                         masks, ori_shape=prepared.ori_shape)

    def __call__(self, image: str | Path | np.ndarray) -> DetResult:
        prepared = self.prepare(image)
        return self.postprocess(self.run(prepared.input), prepared)


class SegPredictor(Predictor):
    """Semantic segmentation: ``predictor(image)`` -> (H, W) int64 label map at the original
    size (where the test pipeline resizes, the label map is resized back nearest-neighbour:
    mmseg resizes the logits instead, which can move class borders by a pixel)."""

    task = 'seg'

    def postprocess(self, outputs: list[np.ndarray], prepared: Prepared) -> np.ndarray:
        import cv2
        label = outputs[0][0]
        h, w = prepared.ori_shape
        if label.shape != (h, w):
            label = cv2.resize(label.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
        return label.astype(np.int64)

    def __call__(self, image: str | Path | np.ndarray) -> np.ndarray:
        prepared = self.prepare(image)
        return self.postprocess(self.run(prepared.input), prepared)


PREDICTORS = {'det': DetPredictor, 'seg': SegPredictor}


def load_predictor(path: str | Path, runtime: str = 'onnxruntime', precision: str = 'fp32',
                   threads: int | None = None) -> Any:
    """The predictor for the task stored in ``path``'s metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'model not found: {path}')
    task = checked_metadata(path)['task']
    if task not in PREDICTORS:
        raise ValueError(f'{path}: unknown task {task!r}')
    return PREDICTORS[task](path, runtime, precision, threads)
