"""Where one eager forward of a backbone spends its time: self CPU time per op kind, and how
fast its oneDNN matmuls run (the bound the deployment comparison in docs/benchmarks.md rests on).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from ..models.backbones import build_pvt

MATMUL_OPS = ('mkldnn::_linear_pointwise',)


@dataclass(frozen=True)
class OpProfile:
    """Self CPU milliseconds per op name (``ops``, largest first), the matmul FLOPs
    (2 x multiply-adds, from the recorded shapes) and the total."""

    ops: list[tuple[str, float]]
    matmul_gflop: float
    matmul_ms: float
    total_ms: float

    def format(self, top: int = 10) -> str:
        rate = self.matmul_gflop / (self.matmul_ms / 1e3) if self.matmul_ms else 0.
        lines = [f'{name:40s} {ms:9.1f} ms' for name, ms in self.ops[:top]]
        lines.append(f'matmuls: {self.matmul_gflop:.1f} GFLOP in {self.matmul_ms:.1f} ms '
                     f'({rate:.0f} GFLOP/s); all ops: {self.total_ms:.1f} ms')
        return '\n'.join(lines)


def profile_backbone(arch: str, shape: tuple[int, int], mode: str = 'fp32',
                     threads: int | None = None, seed: int = 0) -> OpProfile:
    """Profile one inference forward of ``arch`` on a (1, 3, H, W) input, after a warm-up;
    ``mode``: 'fp32' or 'bf16' (CPU autocast)."""
    if mode not in ('fp32', 'bf16'):
        raise ValueError(f"mode must be 'fp32' or 'bf16', got {mode!r}")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = build_pvt(arch).eval()
    x = torch.randn(1, 3, *shape)
    autocast = (torch.autocast('cpu', dtype=torch.bfloat16) if mode == 'bf16'
                else contextlib.nullcontext())
    with torch.no_grad(), autocast:
        model(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model(x)
    per_op: dict[str, float] = {}
    gflop = matmul_ms = 0.
    for e in prof.key_averages(group_by_input_shape=True):
        ms = e.self_cpu_time_total / 1e3
        per_op[e.key] = per_op.get(e.key, 0.) + ms
        if e.key in MATMUL_OPS:
            a, b = e.input_shapes[0], e.input_shapes[1]
            gflop += 2 * math.prod(a[:-1]) * a[-1] * b[0] * e.count / 1e9
            matmul_ms += ms
    ops = sorted(per_op.items(), key=lambda kv: -kv[1])
    return OpProfile(ops, gflop, matmul_ms, sum(per_op.values()))
