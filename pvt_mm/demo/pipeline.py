"""The built-in demo: generate the data, train and evaluate a PVT detector and segmentor on CPU.

Each stage goes through the same code as ``tools/train.py`` / ``tools/test.py``
(:mod:`pvt_mm.engine.runtime`): the Runner trains, then tests the trained model in memory.
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
NO_VALIDATION = dict(val_cfg=None, val_dataloader=None, val_evaluator=None)
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


def _train_and_test(name: str, config: str, work_dir: Path, options: dict,
                    metric_keys: dict[str, str]) -> StageResult:
    from pvt_mm.engine.runtime import build_runner, load_config
    _banner(f'{name}: train, then test  ({config})')
    start = time.perf_counter()
    cfg = load_config(config, {**NO_VALIDATION, **options}, str(work_dir))
    runner = build_runner(cfg)
    runner.train()
    train_seconds = time.perf_counter() - start
    metrics = runner.test()
    if not metrics:  # CocoMetric reports nothing when no box passed the score threshold
        print(f'{name}: the model predicted nothing; its metrics count as 0')
        metrics = dict.fromkeys(metric_keys.values(), 0.0)
    missing = [k for k in metric_keys.values() if k not in metrics]
    if missing:
        raise RuntimeError(f'{name}: the evaluator did not report {missing}; got {metrics}')
    picked = {label: float(metrics[key]) for label, key in metric_keys.items()}
    checkpoint = (work_dir / 'last_checkpoint').read_text().strip()
    return StageResult(name, picked, time.perf_counter() - start, train_seconds, runner.iter,
                       config, checkpoint)


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
    det_options = {} if args.det_epochs is None else {'train_cfg.max_epochs': args.det_epochs}
    results = [_train_and_test('detection', args.det_config, work_dir / 'det', det_options,
                               DET_METRICS)]
    if not args.skip_seg and _seg_fits(args, results[0], time.perf_counter() - start):
        seg_options = {} if args.seg_iters is None else {'train_cfg.max_iters': args.seg_iters}
        results.append(_train_and_test('segmentation', args.seg_config, work_dir / 'seg',
                                       seg_options, SEG_METRICS))
    _report(results, time.perf_counter() - start, data_seconds, args.data_root)
    map50 = results[0].metrics['bbox mAP@0.5']
    if map50 < args.min_map50:
        print(f'bbox mAP@0.5 {map50:.3f} is below the target {args.min_map50}')
        return 1
    print(f'bbox mAP@0.5 {map50:.3f} reaches the target {args.min_map50}')
    return 0
