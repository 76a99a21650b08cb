"""Predictors over an end-to-end .onnx: the torch-free :mod:`pvt_mm_runtime.predictor`,
re-exported here for compatibility (the same objects). A deployment machine without PyTorch
imports ``pvt_mm_runtime`` directly: ``import pvt_mm...`` loads torch, mmengine and mmcv."""
from pvt_mm_runtime.metadata import METADATA_KEY, read_metadata  # noqa: F401
from pvt_mm_runtime.predictor import (PREDICTORS, DetPredictor, DetResult, Predictor,  # noqa: F401
                                      Prepared, SegPredictor, load_predictor, paste_masks,
                                      read_image, resized_size)
