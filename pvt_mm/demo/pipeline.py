"""The built-in demo: generate the data, train and evaluate a PVT detector and segmentor on CPU.

Each stage goes through the same code as ``tools/train.py`` / ``tools/test.py``
(:mod:`pvt_mm.engine.runtime`): the Runner trains, validating :data:`VAL_POINTS` times (the
last validation, on the whole validation set after the last step, gives the reported metrics),
then draws a few validation images with ground truth beside prediction and the loss / metric
curve (:mod:`pvt_mm.visualization.predictions`).
"""
from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmengine.hooks import Hook

from .dataset import DemoDataSpec, make_demo_data

CONFIG_DIR = Path(__file__).resolve().parents[2] / 'configs' / 'demo'
DET_CONFIG = CONFIG_DIR / 'atss_pvtv2-b0_fpn_demo.py'
SEG_CONFIG = CONFIG_DIR / 'fpn_pvtv2-b0_demo-seg.py'
DATA_ENV = 'PVT_MM_DEMO_DATA'  # the demo configs read their data root from it
DEFAULT_DATA_ROOT = 'data/demo'  # the configs' fallback when DATA_ENV is not set
TARGET_MAP50 = 0.5
DET_METRICS = {'bbox mAP': 'coco/bbox_mAP', 'bbox mAP@0.5': 'coco/bbox_mAP_50',
               'bbox mAP@0.75': 'coco/bbox_mAP_75'}
SEG_METRICS = {'mIoU %': 'mIoU', 'mAcc %': 'mAcc', 'aAcc %': 'aAcc'}  # mmseg reports percent
CURVE_METRIC = {'detection': 'coco/bbox_mAP_50', 'segmentation': 'mIoU'}
# validations over training (the curve's points); a validation of the 100 demo images costs
# about as much as 10 training iterations
VAL_POINTS = 3
PICTURES = 4  # validation images drawn per stage
TIME_BUDGET_S = 600
# a segmentor iteration (batch 8) costs about this many detector iterations (batch 16);
# measured 0.26 s vs 0.52 s on 2 shared cores
SEG_ITER_COST = 0.5


@dataclass
class StageResult:
    name: str
    metrics: dict[str, float]
    seconds: float
    train_seconds: float
    iters: int
    config: str
    checkpoint: str
    pictures: list[str] = field(default_factory=list)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = DemoDataSpec()
    parser = argparse.ArgumentParser(
        description='Train and evaluate a PVTv2-b0 detector (and segmentor) on the built-in '
        'synthetic dataset, on CPU.')
    parser.add_argument('--data-root', default=DEFAULT_DATA_ROOT, help='demo data folder')
    parser.add_argument('--work-dir', default='work_dirs/demo', help='logs and checkpoints')
    parser.add_argument('--det-config', default=str(DET_CONFIG))
    parser.add_argument('--seg-config', default=str(SEG_CONFIG))
    parser.add_argument('--skip-seg', action='store_true', help='detection only')
    parser.add_argument('--num-train', type=int, default=defaults.num_train)
    parser.add_argument('--num-val', type=int, default=defaults.num_val)
    parser.add_argument('--det-epochs', type=int, help="override the detector's epochs")
    parser.add_argument('--seg-iters', type=int, help="override the segmentor's iterations")
    parser.add_argument('--min-map50', type=float, default=TARGET_MAP50,
                        help='exit with status 1 when bbox mAP@0.5 ends below this')
    parser.add_argument('--time-budget', type=float, default=TIME_BUDGET_S,
                        help='seconds; the segmentation stage is skipped when the detection '
                        'stage shows it would not finish within them (0: no limit)')
    return parser.parse_args(argv)


def _banner(text: str) -> None:
    print(f'\n{"=" * 12} {text} {"=" * max(0, 60 - len(text))}', flush=True)


class _LastMetrics(Hook):
    """Keeps the metrics of the latest validation."""

    priority = 'LOWEST'

    def __init__(self) -> None:
        self.metrics: dict | None = None

    def after_val_epoch(self, runner, metrics: dict | None = None) -> None:
        self.metrics = dict(metrics or {})


def _set_length(cfg, length: int | None) -> None:
    """``--det-epochs`` / ``--seg-iters``: the loop's length, and the LR schedules and the
    checkpoint interval that end with it (so a longer run keeps its decay to the end)."""
    key = 'max_epochs' if 'max_epochs' in cfg.train_cfg else 'max_iters'
    old = cfg.train_cfg[key]
    if length is None or length == old:
        return
    cfg.train_cfg[key] = length
    for sched in cfg.get('param_scheduler') or []:
        if sched.get('end') == old:
            sched['end'] = length
    ckpt = cfg.get('default_hooks', {}).get('checkpoint')
    if ckpt is not None and ckpt.get('interval') == old:
        ckpt['interval'] = length


def _val_interval(cfg) -> dict:
    """``train_cfg.val_interval`` giving :data:`VAL_POINTS` validations (the last at the end)."""
    length = cfg.train_cfg.get('max_epochs') or cfg.train_cfg.get('max_iters')
    return {'train_cfg.val_interval': max(1, math.ceil(length / VAL_POINTS))}


def _pictures(name: str, runner, work_dir: Path) -> list[str]:
    """Ground truth | prediction for a few validation images, and the training curve."""
    from mmengine.runner import EpochBasedTrainLoop

    from pvt_mm.visualization.predictions import (draw_val_predictions, plot_training_curve,
                                                  read_scalars)
    out = work_dir / 'pictures'
    paths = draw_val_predictions(runner, out, PICTURES)[-1:]  # the stacked picture
    scale = (len(runner.train_dataloader)
             if isinstance(runner.train_loop, EpochBasedTrainLoop) else 1)
    curve = plot_training_curve(read_scalars(runner.log_dir), CURVE_METRIC[name],
                                out / 'training_curve.png', scale, f'demo {name}')
    return [str(p) for p in (*paths, curve)]


def _train_and_test(name: str, config: str, work_dir: Path, length: int | None,
                    metric_keys: dict[str, str]) -> StageResult:
    from pvt_mm.engine.runtime import build_runner, load_config
    _banner(f'{name}: train and validate  ({config})')
    start = time.perf_counter()
    cfg = load_config(config, None, str(work_dir))
    _set_length(cfg, length)
    cfg.merge_from_dict(_val_interval(cfg))
    runner = build_runner(cfg)
    last = _LastMetrics()
    runner.register_hook(last)
    runner.train()
    train_seconds = time.perf_counter() - start
    metrics = last.metrics if last.metrics is not None else runner.test()
    if not metrics:  # CocoMetric reports nothing when no box passed the score threshold
        print(f'{name}: the model predicted nothing; its metrics count as 0')
        metrics = dict.fromkeys(metric_keys.values(), 0.0)
    missing = [k for k in metric_keys.values() if k not in metrics]
    if missing:
        raise RuntimeError(f'{name}: the evaluator did not report {missing}; got {metrics}')
    picked = {label: float(metrics[key]) for label, key in metric_keys.items()}
    checkpoint = (work_dir / 'last_checkpoint').read_text().strip()
    try:
        pictures = _pictures(name, runner, work_dir)
    except Exception as e:  # the metrics stand without the pictures
        print(f'{name}: the pictures could not be drawn: {type(e).__name__}: {e}')
        pictures = []
    return StageResult(name, picked, time.perf_counter() - start, train_seconds, runner.iter,
                       config, checkpoint, pictures)


def _seg_fits(args: argparse.Namespace, det: StageResult, elapsed: float) -> bool:
    """Whether the segmentation stage should finish within ``--time-budget``, estimated from
    the detector's seconds per iteration."""
    if args.time_budget <= 0:
        return True
    from mmengine.config import Config
    iters = args.seg_iters or Config.fromfile(args.seg_config).train_cfg.max_iters
    estimate = det.train_seconds / max(det.iters, 1) * SEG_ITER_COST * iters
    if elapsed + estimate <= args.time_budget:
        return True
    print(f'\nsegmentation skipped: it would take about {estimate:.0f} s more, past the '
          f'{args.time_budget:.0f} s budget ({elapsed:.0f} s used). Run it alone with\n'
          f'  python tools/train.py {args.seg_config}  (or --time-budget 0)')
    return False


def _report(results: list[StageResult], total: float, data_seconds: float,
            data_root: str) -> None:
    _banner('summary')
    print(f'data generation: {data_seconds:6.1f} s')
    for r in results:
        shown = '  '.join(f'{k} {v:.1f}' if k.endswith('%') else f'{k} {v:.3f}'
                          for k, v in r.metrics.items())
        print(f'{r.name:<13} {r.seconds:6.1f} s   {shown}')
    print(f'total:          {total:6.1f} s')
    print('pictures (ground truth | prediction; loss and validation metric):')
    for r in results:
        for path in r.pictures:
            print(f'  {path}')
    env = '' if data_root == DEFAULT_DATA_ROOT else f'{DATA_ENV}={data_root} '
    print('evaluate a checkpoint again with:')
    for r in results:
        print(f'  {env}python tools/test.py {r.config} {r.checkpoint}')
    print(flush=True)


def run_demo(argv: Sequence[str] | None = None, started: float | None = None) -> int:
    """Run the demo; returns the exit status (1 if bbox mAP@0.5 is below ``--min-map50``).

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).
        started: ``time.perf_counter()`` at process start, so that the time budget and the
            reported total include the imports; default: now.
    """
    args = parse_args(argv)
    start = time.perf_counter() if started is None else started
    _banner('demo data')
    data_start = time.perf_counter()
    spec = DemoDataSpec(num_train=args.num_train, num_val=args.num_val)
    make_demo_data(args.data_root, spec)
    data_seconds = time.perf_counter() - data_start
    os.environ[DATA_ENV] = str(Path(args.data_root).resolve())
    work_dir = Path(args.work_dir)
    results = [_train_and_test('detection', args.det_config, work_dir / 'det', args.det_epochs,
                               DET_METRICS)]
    if not args.skip_seg and _seg_fits(args, results[0], time.perf_counter() - start):
        results.append(_train_and_test('segmentation', args.seg_config, work_dir / 'seg',
                                       args.seg_iters, SEG_METRICS))
    _report(results, time.perf_counter() - start, data_seconds, args.data_root)
    map50 = results[0].metrics['bbox mAP@0.5']
    if map50 < args.min_map50:
        print(f'bbox mAP@0.5 {map50:.3f} is below the target {args.min_map50}')
        return 1
    print(f'bbox mAP@0.5 {map50:.3f} reaches the target {args.min_map50}')
    return 0
