"""Deployment: ONNX export (:mod:`.export`); ONNX Runtime, OpenVINO (:mod:`.runtimes`)."""
from .export import (DEFAULT_OPSET, ExportResult, RawOutputs, check_onnx_graph, export_arch,
                     export_config, export_onnx)
from .runtimes import RUNTIMES, RuntimeModel, max_abs_diff, parity

__all__ = ['DEFAULT_OPSET', 'ExportResult', 'RawOutputs', 'check_onnx_graph', 'export_arch',
           'export_config', 'export_onnx', 'RUNTIMES', 'RuntimeModel', 'max_abs_diff', 'parity']
