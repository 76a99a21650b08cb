"""The deployment runtimes in the benchmark: ONNX Runtime and OpenVINO on the graph our
exporter writes (:mod:`pvt_mm.deploy`), and the same-process matmul peak.

Each runtime candidate runs the graph exported from the very model (same seed, same weights)
that the 'ours' candidate runs, on the same input, in the same alternation. In bf16 mode
OpenVINO runs with ``INFERENCE_PRECISION_HINT=bf16``; ONNX Runtime's CPU provider has no bf16
kernels for this graph and runs fp32 (its row says so). The matmul peak is a 4096x4096 GEMM in
the mode's precision timed in the same alternation; a model's share of it is its FLOPs
(2 x the multiply-accumulates of :mod:`.flops`) per second over the GEMM's.
"""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from ..deploy.export import (RawOutputs, backbone_output_names, export_onnx, flatten_outputs,
                             output_names)
from ..deploy.runtimes import RuntimeModel
from ..engine.runtime import build_from_config, read_model_config
from ..models.backbones import build_pvt
from .flops import backbone_complexity, config_complexity
from .models import backbone_impl, synthetic_batch
from .workload import INFERENCE_DTYPES, Candidate, Workload

RUNTIME_IMPLS = ('onnxruntime', 'openvino')
RUNTIME_MODES = ('fp32', 'bf16')
GEMM_SIZE = 4096
_EXPORT_DIR: tempfile.TemporaryDirectory | None = None
_EXPORTS: dict[tuple, Path] = {}


def runtime_candidates(ours: Candidate) -> list[Candidate]:
    """ONNX Runtime and OpenVINO rows beside ``ours`` (fp32 and bf16 inference only)."""
    out = []
    for impl in RUNTIME_IMPLS:
        out.append(replace(ours, label=f'{impl} {ours.subject}', impl=impl, role='peer',
                           modes=RUNTIME_MODES))
    return out


def _exported(c: Candidate, model: torch.nn.Module, shape: Sequence[int]) -> Path:
    """The graph of ``c``'s model, exported once per process and subject."""
    global _EXPORT_DIR
    key = (c.arch, c.config, repr(c.cfg_options))
    if key not in _EXPORTS:
        if _EXPORT_DIR is None:
            _EXPORT_DIR = tempfile.TemporaryDirectory(prefix='pvt_mm_bench_')
        path = Path(_EXPORT_DIR.name) / f'model{len(_EXPORTS)}.onnx'
        if c.config is None:
            names = backbone_output_names(model)
        else:
            with torch.no_grad():
                names = output_names(model.model._forward(torch.zeros(1, 3, *shape)))
        export_onnx(model, path, shape, names=names)
        _EXPORTS[key] = path
    return _EXPORTS[key]


def runtime_workload(c: Candidate, mode: str, shape: Sequence[int], batch_size: int,
                     device: str, threads: int, seed: int) -> Workload:
    """``c.impl`` running the exported graph of pvt_mm's model for ``c`` (seeded as the
    'ours' candidate, so the weights are the same) on the same input."""
    if device != 'cpu':
        raise ValueError(f'{c.impl} is benchmarked on CPU only')
    torch.manual_seed(seed)
    if c.config is None:
        model = build_pvt(c.arch).eval()
        x = torch.randn(batch_size, 3, *shape, generator=torch.Generator().manual_seed(seed))
    else:
        cfg = read_model_config(c.config, c.cfg_options)
        if backbone_impl(cfg)[0] != 'pvt_mm':
            raise ValueError(f'{c.config}: the runtimes run the pvt_mm model of a config')
        detector = build_from_config(cfg, init=True).eval()
        batch = synthetic_batch(detector, cfg, shape, batch_size, seed=seed)
        x = detector.data_preprocessor(batch, False)['inputs']
        model = RawOutputs(detector)
    runner = RuntimeModel(_exported(c, model, tuple(x.shape[-2:])), c.impl, mode, threads)
    array = x.numpy()

    def step() -> None:
        runner(array)

    def features() -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(o) for o in runner(array))

    def fp32_features() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return tuple(flatten_outputs(model(x)))
    return Workload(model, step, features, fp32_features=fp32_features,
                    precision_note=f'{c.impl} kernels: {runner.kernel_precision}')


def gemm_size(mode: str, device: str) -> int:
    """GEMM_SIZE, or an eighth of it for bf16 on a CPU without bf16 matmul kernels (AVX2:
    emulated, ~100x slower; a 4096^2 bf16 GEMM there takes minutes)."""
    bf16 = INFERENCE_DTYPES.get(mode) == torch.bfloat16
    if bf16 and device == 'cpu' and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return GEMM_SIZE // 8
    return GEMM_SIZE


def gemm_workload(mode: str, device: str) -> Workload:
    """A :func:`gemm_size`^2 matmul in the mode's precision (fp32 for fp32 / train)."""
    dtype = INFERENCE_DTYPES.get(mode, torch.float32)
    n = gemm_size(mode, device)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device, dtype) for _ in range(2))

    def step() -> None:
        torch.mm(a, b)
    return Workload(torch.nn.Identity(), step, lambda: ())


def gemm_flops(mode: str, device: str) -> float:
    return 2. * gemm_size(mode, device) ** 3


def model_flops(c: Candidate, shape: Sequence[int], batch_size: int) -> float | None:
    """FLOPs of one step of ``c`` (2 x its multiply-accumulates), or None if not countable."""
    try:
        if c.config is None:
            macs = backbone_complexity(c.arch, shape).flops
        else:
            macs = config_complexity(read_model_config(c.config, c.cfg_options), shape).flops
    except (ValueError, RuntimeError):
        return None
    return 2. * macs * batch_size
