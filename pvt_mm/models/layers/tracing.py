"""Whether a forward is being captured into a graph (traced, exported or compiled)."""
from __future__ import annotations

import torch


def is_graph_capture() -> bool:
    """True while the forward is traced, exported to ONNX or compiled (dynamo, torch.export):
    the layers then take every size from tensor shapes, so the graph follows the input size."""
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling())
