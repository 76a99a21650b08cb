"""Deployment: ONNX export (:mod:`.export`; end to end: :mod:`.end2end`); ONNX Runtime,
OpenVINO (:mod:`.runtimes`); predictors over an end-to-end .onnx (:mod:`.predictor`, the
torch-free :mod:`pvt_mm_runtime` re-exported)."""
from .export import (DEFAULT_OPSET, EXPORTERS, ExportResult, RawOutputs, check_onnx_graph,
                     export_arch, export_config, export_onnx)
from .predictor import DetPredictor, SegPredictor, load_predictor, read_metadata
from .runtimes import RUNTIMES, RuntimeModel, max_abs_diff, parity

__all__ = ['DEFAULT_OPSET', 'EXPORTERS', 'ExportResult', 'RawOutputs', 'check_onnx_graph',
           'export_arch', 'export_config', 'export_onnx', 'RUNTIMES', 'RuntimeModel',
           'max_abs_diff', 'parity', 'DetPredictor', 'SegPredictor', 'load_predictor',
           'read_metadata']
