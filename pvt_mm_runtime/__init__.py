"""pvt_mm_runtime: run pvt_mm's end-to-end .onnx exports with numpy, OpenCV and one runtime
(ONNX Runtime or OpenVINO): no PyTorch, no mmengine / mmcv / mmdet, no config.

    from pvt_mm_runtime import load_predictor
    predictor = load_predictor('atss.onnx', 'onnxruntime')   # or 'openvino'
    result = predictor('image.jpg')

Shipped by pvt_mm's setup.py beside ``pvt_mm`` (``pvt_mm.deploy.predictor`` re-exports it);
importing it imports numpy only, the runtime and OpenCV when first used."""
from .metadata import METADATA_KEY, read_metadata
from .predictor import (DetPredictor, DetResult, Prepared, SegPredictor, load_predictor,
                        paste_masks, read_image, resized_size)
from .runtimes import PRECISIONS, RUNTIMES, RuntimeModel

__all__ = ['METADATA_KEY', 'read_metadata', 'DetPredictor', 'DetResult', 'Prepared',
           'SegPredictor', 'load_predictor', 'paste_masks', 'read_image', 'resized_size',
           'PRECISIONS', 'RUNTIMES', 'RuntimeModel']
