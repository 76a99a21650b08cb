"""Running exported graphs in ONNX Runtime or OpenVINO (CPU): numpy in, numpy out.

Imports numpy only; the runtime is imported when a :class:`RuntimeModel` is made for it."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

RUNTIMES = ('onnxruntime', 'openvino')
PRECISIONS = ('fp32', 'bf16')
# What each runtime runs for a requested precision. ONNX Runtime's CPU provider has no bf16
# kernels for this graph (MatMul / Conv / LayerNormalization): it runs fp32 whatever is asked.
ORT_KERNEL_PRECISION = {'fp32': 'fp32', 'bf16': 'fp32'}
OPENVINO_PRECISION_HINT = {'fp32': 'f32', 'bf16': 'bf16'}


@lru_cache(maxsize=None)
def openvino_core() -> Any:
    """The process's one ``openvino.Core``, kept for the life of the process.

    Each Core loads its own CPU plugin, and on Linux each CPU plugin points the creating
    thread's alternate signal stack (``sigaltstack``) at a buffer of its own, which it unmaps
    when the plugin goes; it restores the previous stack only when its own is still current.
    Two plugins released in creation order (A, B: A goes first, then B restores A's unmapped
    buffer) leave the thread's alternate stack pointing at freed memory, and every later
    signal handled with ``SA_ONSTACK`` there (all of Python's handlers, e.g. the ``SIGCHLD``
    handler torch's DataLoader installs) writes its frame into whatever lives there now: the
    heap is corrupted and the process dies later, far from the cause. One Core per process,
    never released, creates one plugin and one stack that stays valid."""
    import openvino as ov
    return ov.Core()


class RuntimeModel:
    """An exported graph loaded into ``runtime`` on CPU: ``model(x)`` with x a (B, 3, H, W)
    float32 array (or a torch tensor) -> list of float32 numpy outputs, in the graph's output
    order.

    ``precision``: 'fp32' or 'bf16' (OpenVINO: ``INFERENCE_PRECISION_HINT``; ONNX Runtime:
    fp32 kernels either way, see :data:`ORT_KERNEL_PRECISION`). ``threads``: intra-op threads
    (None: the runtime's default)."""

    def __init__(self, path: str | Path, runtime: str = 'onnxruntime', precision: str = 'fp32',
                 threads: int | None = None) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f'runtime must be one of {RUNTIMES}, got {runtime!r}')
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        self.path, self.runtime, self.precision = Path(path), runtime, precision
        if runtime == 'onnxruntime':
            import onnxruntime as ort
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
                opts.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(path), opts,
                                                 providers=['CPUExecutionProvider'])
            self.input_name = self._session.get_inputs()[0].name
            self.kernel_precision = ORT_KERNEL_PRECISION[precision]
        else:
            config = {'INFERENCE_PRECISION_HINT': OPENVINO_PRECISION_HINT[precision],
                      'PERFORMANCE_HINT': 'LATENCY'}
            if threads:
                config['INFERENCE_NUM_THREADS'] = threads
            self._compiled = openvino_core().compile_model(str(path), 'CPU', config)
            self._request = self._compiled.create_infer_request()
            hint = self._compiled.get_property('INFERENCE_PRECISION_HINT')
            self.kernel_precision = hint.get_type_name() if hasattr(hint, 'get_type_name') \
                else str(hint)

    def __call__(self, x: Any) -> list[np.ndarray]:
        if hasattr(x, 'detach'):  # a torch.Tensor
            x = x.detach().float().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.runtime == 'onnxruntime':
            return self._session.run(None, {self.input_name: x})
        result = self._request.infer({0: x})
        return [np.asarray(result[o]) for o in self._compiled.outputs]
