"""Whole-model latency, image in -> detections / label map out: PyTorch eager (mmdet's / mmseg's
``test_step``: preprocessing, model, box decoding and NMS) against the end-to-end graph
(:mod:`pvt_mm.deploy.end2end`) in ONNX Runtime and OpenVINO, with the share of each route's
time spent outside the backbone (the backbone alone timed the same way: eager, and its own
exported graph in each runtime).

``tools/benchmark.py --config CONFIG --end2end --runtimes [--shape 800 1333] [--mode fp32 bf16]``
All rows run alternately in one process (median of ``runs`` after ``warmup``), random weights.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..deploy.end2end import build_model, export_end2end
from ..deploy.export import export_onnx
from ..deploy.predictor import Prepared, load_predictor
from ..deploy.runtimes import RuntimeModel
from ..engine.runtime import task_scope
from .machine_load import LoadMonitor

RUNTIMES = ('onnxruntime', 'openvino')


@contextlib.contextmanager
def fp32_mmcv_ops() -> Iterator[None]:
    """mmcv's CPU NMS and RoIAlign kernels take float32 only; under bf16 autocast their inputs
    arrive in bf16 ("expected scalar type Float but found BFloat16"). While the block runs,
    they compute in float32 and return floating results in their first input's dtype;
    restored afterwards."""
    from mmcv.ops.nms import NMSop
    from mmcv.ops.roi_align import RoIAlignFunction

    def fp32(forward: Callable) -> Callable:
        def cast(ctx, *args, **kwargs):
            dtype = args[0].dtype
            args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a
                    for a in args]
            out = forward(ctx, *args, **kwargs)
            return out.to(dtype) if torch.is_tensor(out) and out.is_floating_point() else out
        return staticmethod(cast)
    saved = [(cls, cls.__dict__['forward']) for cls in (NMSop, RoIAlignFunction)]
    try:
        for cls, forward in saved:
            cls.forward = fp32(forward.__func__)
        yield
    finally:
        for cls, forward in saved:
            cls.forward = forward


def _eager_whole(model: torch.nn.Module, image: np.ndarray, task: str, bf16: bool) -> Callable:
    h, w = image.shape[:2]
    inputs = [torch.from_numpy(image.transpose(2, 0, 1).copy())]
    if task == 'det':
        from mmdet.structures import DetDataSample as Sample
        meta = dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1., 1.))
    else:
        from mmseg.structures import SegDataSample as Sample
        meta = dict(img_shape=(h, w), ori_shape=(h, w))

    def run() -> None:
        ctx = torch.autocast('cpu', torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.no_grad(), ctx, fp32_mmcv_ops() if bf16 else contextlib.nullcontext():
            model.test_step(dict(inputs=inputs, data_samples=[Sample(metainfo=meta)]))
    return run


def _eager_backbone(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> Callable:
    def run() -> None:
        ctx = torch.autocast('cpu', torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            model.backbone(x)
    return run


def build_rows(config: str, shape: Sequence[int], modes: Sequence[str], runtimes: bool,
               threads: int | None, workdir: Path) -> dict[str, Callable]:
    """label -> zero-argument callable, for one config at one (H, W)."""
    torch.manual_seed(0)
    model, cfg = build_model(config)
    task = 'seg' if task_scope(cfg) == 'mmseg' else 'det'
    stem = Path(config).stem
    name = f'{stem} @{shape[0]}x{shape[1]}'
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    whole = workdir / f'{stem}_e2e.onnx'
    ckpt = workdir / f'{stem}.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    export_end2end(config, whole, str(ckpt), shape=tuple(shape))
    pre = model.data_preprocessor
    with torch.no_grad():
        x = pre(dict(inputs=[torch.from_numpy(image.transpose(2, 0, 1).copy())]))['inputs']
    backbone = workdir / f'{stem}_backbone.onnx'
    if runtimes:
        export_onnx(model.backbone.eval(), backbone, tuple(x.shape[2:]))
    rows = {}
    for mode in modes:
        bf16 = mode == 'bf16'
        rows[f'{name} eager {mode}'] = _eager_whole(model, image, task, bf16)
        rows[f'{name} eager {mode} backbone'] = _eager_backbone(model, x, bf16)
        if not runtimes:
            continue
        for rt in RUNTIMES:
            if rt == 'onnxruntime' and bf16:
                continue  # its CPU provider runs this graph in fp32 whatever is asked
            predictor = load_predictor(whole, rt, mode, threads)
            prepared = Prepared(np.ascontiguousarray(image.transpose(2, 0, 1)[None],
                                                     dtype=np.float32), tuple(shape))

            def run(p=predictor, q=prepared) -> None:
                p.postprocess(p.run(q.input), q)
            rows[f'{name} {rt} {mode}'] = run
            bb = RuntimeModel(backbone, rt, mode, threads)
            xb = x.numpy()
            rows[f'{name} {rt} {mode} backbone'] = lambda m=bb, v=xb: m(v)
    return rows


def time_rows(rows: dict[str, Callable], runs: int, warmup: int) -> dict[str, float]:
    """Median seconds per row; rows alternate within each run."""
    for _ in range(warmup):
        for fn in rows.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(runs):
        for k, fn in rows.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def report(medians: dict[str, float]) -> list[str]:
    """Markdown table: whole-model ms, backbone ms, share outside the backbone."""
    lines = ['| model / route | whole model (ms) | backbone (ms) | outside the backbone |',
             '|---|---|---|---|']
    for label, t in medians.items():
        if label.endswith(' backbone'):
            continue
        b = medians.get(f'{label} backbone')
        share = f'{100 * (1 - b / t):.0f}%' if b else '-'
        lines.append(f'| {label} | {1000 * t:.0f} | {1000 * b:.0f} | {share} |' if b else
                     f'| {label} | {1000 * t:.0f} | - | - |')
    return lines


def end2end_main(configs: Sequence[str], shapes: Sequence[Sequence[int]],
                 modes: Sequence[str], runtimes: bool, runs: int, warmup: int,
                 threads: int | None) -> list[str]:
    """``tools/benchmark.py --end2end``: the table (also printed), with the load around it."""
    if threads:
        torch.set_num_threads(threads)
    modes = [m for m in modes if m in ('fp32', 'bf16')] or ['fp32']
    before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        medians = {}
        with LoadMonitor(loadavg_start=before) as monitor:  # other processes, not this one
            for config in configs:
                for shape in shapes:
                    rows = build_rows(config, shape, modes, runtimes, threads, Path(tmp))
                    medians.update(time_rows(rows, runs, warmup))
    load = monitor.report
    lines = report(medians) + [f'{k}: {v}' for k, v in load.lines().items()] + [
        f'median of {runs} alternated runs after {warmup} warm-up, torch threads '
        f'{torch.get_num_threads()}, random weights']
    if load.warning():
        lines.append(load.warning())
    print('\n'.join(lines))
    return lines
