"""Latency, throughput, peak memory and bf16 accuracy of PVT backbones and whole models.

Every compared model runs in the same process with their runs alternated (run i of each model
before run i + 1 of any), so a shared or throttling CPU slows them alike; latency is the median
of the timed runs after warm-up. Peak memory is measured for each model and mode in its own
fresh subprocess (:mod:`._memory_worker`): on CPU the growth of the peak resident set over the
process's size before the model is built, on CUDA ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from ..arch import check_arch
from ..engine.runtime import build_from_config, read_model_config
from ..models.fast.threads import set_adaptive_threads
from .contention import BusyNeighbour, is_loaded, loaded, loaded_workload
from .deploy_bench import (RUNTIME_IMPLS, gemm_flops, gemm_workload, model_flops,
                           runtime_workload)
from .models import (arch_spec, backbone_impl, build_peer_backbone, mmdet_backbone_cfg,
                     synthetic_batch, with_backbone_impl)
from .workload import INFERENCE_DTYPES, SEED, Candidate, Workload

MODES = ('fp32', 'bf16', 'fp16', 'train')
TRAIN_LR = 1e-4  # AdamW for a backbone alone (configs use their own optim_wrapper)
MIB = 2 ** 20
STEP_GAP_S = 0.2  # untimed pause before each step (see time_alternating)
PAGE_BYTES = resource.getpagesize()


def backbone_candidates(arch: str, peers: Sequence[str] = ('mmdet', 'timm'),
                        with_cp: bool = False) -> list[Candidate]:
    """Ours, mmdet's built-in and timm's for ``arch``; for b2_li (no mmdet peer) our b2."""
    arch = check_arch(arch)
    spec = arch_spec(arch)
    ours = Candidate(f'pvt_mm {arch}', 'pvt_mm', 'ours', arch, arch=arch)
    out = [ours]
    if with_cp:
        out.append(replace(ours, label=f'{ours.label} with_cp', with_cp=True, modes=('train',)))
    if 'mmdet' in peers:
        if spec.linear:
            ref = arch.replace('_li', '')
            out.append(replace(ours, label=f'pvt_mm {ref} (no mmdet peer)', role='ref',
                               arch=ref))
        elif mmdet_backbone_cfg(arch) is not None:
            out.append(replace(ours, label=f'mmdet {arch}', impl='mmdet', role='peer'))
    if 'timm' in peers and spec.version == 2:
        out.append(replace(ours, label=f'timm {arch}', impl='timm', role='peer'))
    return out


def config_candidates(config: str, cfg_options: dict | None = None, peers: Sequence[str] = (
        'mmdet',), with_cp: bool = False) -> list[Candidate]:
    """The config with our backbone and, where mmdet has the architecture, with its own."""
    cfg = read_model_config(config, cfg_options)
    _, arch = backbone_impl(cfg)
    name = Path(config).stem
    out = [Candidate(f'{name} [pvt_mm]', 'pvt_mm', 'ours', name, arch=arch, config=config,
                     cfg_options=cfg_options)]
    if with_cp:
        out.append(replace(out[0], label=f'{name} [pvt_mm with_cp]', with_cp=True,
                           modes=('train',)))
    if 'mmdet' in peers and with_backbone_impl(cfg, 'mmdet') is not None:
        out.append(replace(out[0], label=f'{name} [mmdet]', impl='mmdet', role='peer'))
    return out


# ---- building what runs ------------------------------------------------------------------------
def autocast_context(mode: str, device: str) -> AbstractContextManager:
    """torch.autocast for 'bf16' / 'fp16' on ``device`` ('cpu', 'cuda', 'cuda:1'), else none."""
    device_type = device.split(':')[0]
    if mode in INFERENCE_DTYPES:
        if mode == 'fp16' and device_type == 'cpu':
            raise ValueError('fp16 autocast is benchmarked on CUDA only (use --device cuda)')
        return torch.autocast(device_type, dtype=INFERENCE_DTYPES[mode])
    return nullcontext()


def build_workload(c: Candidate, mode: str, shape: Sequence[int], batch_size: int,
                   device: str, threads: int | None = None) -> Workload:
    """Build ``c`` (seeded, so equal candidates get equal weights) ready to run ``mode``;
    ``threads``: the deployment runtimes' thread count (None: their default)."""
    torch.manual_seed(SEED)
    if c.impl in RUNTIME_IMPLS:
        return runtime_workload(c, mode, shape, batch_size, device, threads, SEED)
    if c.config is None:
        return _backbone_workload(c, mode, shape, batch_size, device)
    return _config_workload(c, mode, shape, batch_size, device)


def _backbone_workload(c: Candidate, mode: str, shape: Sequence[int], batch_size: int,
                       device: str) -> Workload:
    model = build_peer_backbone(c.arch, c.impl).to(device)
    if c.with_cp:
        model.with_cp = True
    x = torch.randn(batch_size, 3, *shape, generator=torch.Generator().manual_seed(SEED))
    x = x.to(device)

    def features() -> tuple[Tensor, ...]:
        return tuple(model(x))

    if mode == 'train':
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=TRAIN_LR)

        def train_step() -> float:
            opt.zero_grad(set_to_none=True)
            loss = sum(o.float().pow(2).mean() for o in model(x))
            loss.backward()
            opt.step()
            return loss.item()
        return Workload(model, train_step, features)
    model.eval()
    ctx = autocast_context(mode, device)

    def infer() -> None:
        with torch.no_grad(), ctx:
            model(x)
    return Workload(model, infer, features)


def _config_workload(c: Candidate, mode: str, shape: Sequence[int], batch_size: int,
                     device: str) -> Workload:
    cfg = with_backbone_impl(read_model_config(c.config, c.cfg_options), c.impl)
    if c.with_cp:
        cfg.model.backbone.with_cp = True
    model = build_from_config(cfg, init=True).to(device)
    batch = synthetic_batch(model, cfg, shape, batch_size, with_gt=mode == 'train', seed=SEED)
    data = model.data_preprocessor(batch, False)

    def features() -> tuple[Tensor, ...]:
        return tuple(model.backbone(data['inputs']))

    if mode == 'train':
        from mmengine.optim import build_optim_wrapper
        model.train()
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)

        def train_step() -> float:
            log_vars = model.train_step(batch, optim_wrapper)
            return float(torch.as_tensor(log_vars['loss']).detach())
        return Workload(model, train_step, features)
    model.eval()
    ctx = autocast_context(mode, device)

    def infer() -> None:
        with torch.no_grad(), ctx:
            model(data['inputs'], data['data_samples'], mode='tensor')
    return Workload(model, infer, features)


# ---- measuring -------------------------------------------------------------------------------
@dataclass
class Result:
    """Measurements of one candidate in one mode at one input size."""

    label: str
    role: str
    impl: str
    subject: str
    mode: str
    shape: tuple[int, int]
    batch_size: int
    times: list[float] = field(default_factory=list)  # seconds per step
    losses: list[float] = field(default_factory=list)  # training steps
    faults_mib: list[float] = field(default_factory=list)  # fresh pages faulted in per step
    memory_mib: float | None = None
    cosine: list[float] | None = None  # per stage, bf16 / fp16 vs fp32
    max_abs_diff: float | None = None
    with_cp: bool = False
    flops: float | None = None  # per step (2 x multiply-accumulates)
    peak_flops_per_s: float | None = None  # same-process GEMM in this mode's precision
    note: str | None = None

    @property
    def peak_share(self) -> float | None:
        """The model's FLOP/s as a share of the same-process matmul peak."""
        if self.flops is None or not self.peak_flops_per_s:
            return None
        return self.flops / statistics.median(self.times) / self.peak_flops_per_s

    @property
    def latency_ms(self) -> float:
        return 1e3 * statistics.median(self.times)

    @property
    def throughput(self) -> float:
        return self.batch_size / statistics.median(self.times)


def _sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def time_alternating(workloads: dict[str, Workload], runs: int, warmup: int, device: str
                     ) -> tuple[dict[str, list[float]], dict[str, list[float]],
                                dict[str, list[float]]]:
    """Warm each workload up, then run them in turn ``runs`` times.

    The RNG is re-seeded with the run index before every step, so two workloads of the same
    model (with_cp on / off) draw the same dropout / drop-path masks. Each step starts
    ``STEP_GAP_S`` after the previous one (the thread pools of ONNX Runtime / OpenVINO spin on
    after a run and would slow the next model down) inside its workload's ``around()``.
    Returns (seconds per timed step, loss per timed step, MiB of fresh pages faulted in per
    timed step) by label. The faults show how much of a step is spent on the allocator: with
    glibc, tensors above its mmap threshold are new mappings whose pages fault in on first use.
    """
    times: dict[str, list[float]] = {k: [] for k in workloads}
    losses: dict[str, list[float]] = {k: [] for k in workloads}
    faults: dict[str, list[float]] = {k: [] for k in workloads}
    for i in range(warmup + runs):
        for label, w in workloads.items():
            torch.manual_seed(SEED + i)
            _sync(device)
            time.sleep(STEP_GAP_S)
            with w.around() if w.around is not None else nullcontext():
                faults0 = _minor_faults()
                start = time.perf_counter()
                loss = w.step()
                _sync(device)
                elapsed = time.perf_counter() - start
            if i >= warmup:
                times[label].append(elapsed)
                faults[label].append((_minor_faults() - faults0) * PAGE_BYTES / MIB)
                if loss is not None:
                    losses[label].append(loss)
    return times, losses, faults


def _minor_faults() -> int:
    """Page faults of this process served without I/O (fresh or reclaimed anonymous pages)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def reduced_precision_error(w: Workload, mode: str, device: str
                            ) -> tuple[list[float], float]:
    """(cosine similarity per stage, max abs difference) of the backbone's stage maps under
    ``mode``'s autocast vs fp32, same weights and input."""
    w.model.eval()
    with torch.no_grad():
        if w.fp32_features is not None:
            ref, low = w.fp32_features(), w.features()
        else:
            ref = w.features()
            with autocast_context(mode, device):
                low = w.features()
    cos = [torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(),
                                                 dim=0).item() for a, b in zip(ref, low)]
    diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(ref, low))
    return cos, diff


def measure_memory(c: Candidate, mode: str, shape: Sequence[int], batch_size: int,
                   device: str, threads: int | None, warmup: int) -> float:
    """Peak memory (MiB) of building ``c`` and running ``warmup`` + 1 steps, in a fresh
    subprocess (see :mod:`._memory_worker`)."""
    spec = dict(candidate=asdict(c), mode=mode, shape=list(shape), batch_size=batch_size,
                device=device, threads=threads, steps=warmup + 1)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
        p for p in (root, os.environ.get('PYTHONPATH')) if p)}
    proc = subprocess.run(
        [sys.executable, '-m', 'pvt_mm.analysis._memory_worker', '--_memory-worker',
         json.dumps(spec)], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f'memory worker for {c.label} ({mode}) failed:\n{proc.stderr[-3000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])['peak_mib']


def check_modes(modes: Sequence[str], device: str) -> None:
    """ValueError naming an unknown mode or fp16 on CPU."""
    for m in modes:
        if m not in MODES:
            raise ValueError(f'unknown mode {m!r}; choose from {MODES}')
        autocast_context(m, device)


def run_benchmark(candidates: Sequence[Candidate], modes: Sequence[str],
                  shapes: Sequence[tuple[int, int]], batch_size: int = 1, runs: int = 10,
                  warmup: int = 2, device: str = 'cpu', threads: int | None = 2,
                  memory_modes: Sequence[str] | None = None,
                  log: Callable[[str], None] = print, matmul_peak: bool = False,
                  neighbour: BusyNeighbour | None = None) -> list[Result]:
    """Measure every candidate in every mode at every shape; see the module doc.

    ``threads``: torch's (and the runtimes') thread count for every model, pvt_mm's own
    choice switched off (:mod:`pvt_mm.models.fast.threads`); None: each library's default.
    ``matmul_peak``: also time a 4096^2 GEMM in each mode's precision in the same alternation
    and give each result its FLOPs and share of that peak (:mod:`.deploy_bench`). Peak memory
    is not measured for the deployment runtimes. ``neighbour``: also time every candidate
    while that process spins (:mod:`.contention`), in the same alternation."""
    check_modes(modes, device)
    memory_modes = modes if memory_modes is None else memory_modes
    if threads:
        torch.set_num_threads(threads)
        set_adaptive_threads(False)
    try:
        return _run(candidates, modes, shapes, batch_size, runs, warmup, device, threads,
                    memory_modes, log, matmul_peak, neighbour)
    finally:
        if threads:
            set_adaptive_threads(None)


def _run(candidates: Sequence[Candidate], modes: Sequence[str],
         shapes: Sequence[tuple[int, int]], batch_size: int, runs: int, warmup: int,
         device: str, threads: int | None, memory_modes: Sequence[str],
         log: Callable[[str], None], matmul_peak: bool, neighbour: BusyNeighbour | None
         ) -> list[Result]:
    results = []
    for shape in shapes:
        for mode in modes:
            group = [c for c in candidates if c.runs_in(mode)]
            log(f'[{mode} {shape[0]}x{shape[1]} batch {batch_size}] building '
                f'{", ".join(c.label for c in group)}')
            workloads = {c.label: build_workload(c, mode, shape, batch_size, device, threads)
                         for c in group}
            if neighbour is not None:
                workloads.update({loaded(c).label: loaded_workload(workloads[c.label], neighbour)
                                  for c in group})
            if matmul_peak:
                workloads[GEMM_LABEL] = gemm_workload(mode, device)
            times, losses, faults = time_alternating(workloads, runs, warmup, device)
            peak = (gemm_flops(mode, device) / statistics.median(times[GEMM_LABEL]) if matmul_peak
                    else None)
            if peak is not None:
                log(f'  {GEMM_LABEL}: {peak / 1e9:.0f} GFLOP/s')
            for c in group:
                r = Result(c.label, c.role, c.impl, c.subject, mode, tuple(shape), batch_size,
                           times[c.label], losses[c.label], faults_mib=faults[c.label],
                           with_cp=c.with_cp, peak_flops_per_s=peak,
                           note=workloads[c.label].precision_note)
                if matmul_peak and mode != 'train':
                    r.flops = _flops(c, shape, batch_size)
                if mode in INFERENCE_DTYPES:
                    r.cosine, r.max_abs_diff = reduced_precision_error(
                        workloads[c.label], mode, device)
                results.append(r)
                log(f'  {c.label}: {r.latency_ms:.1f} ms')
            for c in group if neighbour is not None else ():
                lc = loaded(c)
                results.append(Result(lc.label, c.role, c.impl, lc.subject, mode, tuple(shape),
                                      batch_size, times[lc.label], losses[lc.label],
                                      faults_mib=faults[lc.label], with_cp=c.with_cp,
                                      note=workloads[c.label].precision_note))
                log(f'  {lc.label}: {results[-1].latency_ms:.1f} ms')
            del workloads
            if mode in memory_modes:
                idle = [r for r in results[len(results) - len(group) * (2 if neighbour else 1):]
                        if not is_loaded(r)]
                for c, r in zip(group, idle):
                    if c.impl in RUNTIME_IMPLS:
                        continue
                    r.memory_mib = measure_memory(c, mode, shape, batch_size, device, threads,
                                                  warmup)
                    log(f'  {c.label}: peak memory {r.memory_mib:.0f} MiB')
    return results


GEMM_LABEL = 'matmul 4096x4096'
_FLOPS: dict[tuple, float | None] = {}


def _flops(c: Candidate, shape: Sequence[int], batch_size: int) -> float | None:
    """FLOPs per step of the architecture ``c`` runs (the same for every implementation)."""
    key = (c.arch if c.config is None else c.config, repr(c.cfg_options), tuple(shape),
           batch_size)
    if key not in _FLOPS:
        _FLOPS[key] = model_flops(c, shape, batch_size)
    return _FLOPS[key]


def peak_lines(results: Sequence[Result]) -> list[str]:
    """'label mode HxW: 12.3 GFLOP, 45% of the fp32 matmul peak (300 GFLOP/s)' per result."""
    out = []
    for r in results:
        if r.peak_share is None:
            continue
        precision = 'fp32' if r.mode in ('fp32', 'train') else r.mode
        line = (f'{r.label} {r.mode} {r.shape[0]}x{r.shape[1]}: {r.flops / 1e9:.1f} GFLOP in '
                f'{r.latency_ms:.1f} ms = {100 * r.peak_share:.0f}% of the same-process '
                f'{precision} matmul peak ({r.peak_flops_per_s / 1e9:.0f} GFLOP/s)')
        if r.note:
            line += f' [{r.note}]'
        out.append(line)
    return out
