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
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmengine.hooks import Hook

from ..engine.checkpoint_io import latest_checkpoint
from ..engine.runtime import build_runner, load_config
from .dataset import DemoDataSpec, make_demo_data
from .plan import (TARGET_MIOU, VAL_POINTS, Plan, Speed, Work, det_seconds, measure_speed,
                   plan_demo, replan_seg)

CONFIG_DIR = Path(__file__).resolve().parents[2] / 'configs' / 'demo'
TEST_TOOL = Path(__file__).resolve().parents[2] / 'tools' / 'test.py'
DET_CONFIG = CONFIG_DIR / 'atss_pvtv2-b0_fpn_demo.py'
SEG_CONFIG = CONFIG_DIR / 'fpn_pvtv2-b0_demo-seg.py'
DATA_ENV = 'PVT_MM_DEMO_DATA'  # the demo configs read their data root from it
DEFAULT_DATA_ROOT = 'data/demo'  # the configs' fallback when DATA_ENV is not set
TARGET_MAP50 = 0.5
DET_METRICS = {'bbox mAP': 'coco/bbox_mAP', 'bbox mAP@0.5': 'coco/bbox_mAP_50',
               'bbox mAP@0.75': 'coco/bbox_mAP_75'}
SEG_METRICS = {'mIoU %': 'mIoU', 'mAcc %': 'mAcc', 'aAcc %': 'aAcc'}  # mmseg reports percent
CURVE_METRIC = {'detection': 'coco/bbox_mAP_50', 'segmentation': 'mIoU'}
PICTURES = 4  # validation images drawn per stage
TIME_BUDGET_S = 600
CURVE_LABEL = {'detection': 'mAP@0.5', 'segmentation': 'mIoU'}


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
    parser.add_argument('--min-miou', type=float, default=TARGET_MIOU,
                        help='exit with status 1 when the segmentor\'s mIoU (%%) ends below this')
    parser.add_argument('--time-budget', type=float, default=TIME_BUDGET_S,
                        help='seconds for the whole demo: a few timed iterations of each stage '
                        'at the start plan both stages to fit (fewer validations, then '
                        'shorter schedules down to the ones that keep the quality targets; '
                        'the segmentor is skipped only when even that does not fit). 0: no '
                        'limit, the configured lengths')
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


def _val_interval(cfg, val_points: int = VAL_POINTS) -> dict:
    """``train_cfg.val_interval`` giving ``val_points`` validations (the last at the end)."""
    length = cfg.train_cfg.get('max_epochs') or cfg.train_cfg.get('max_iters')
    return {'train_cfg.val_interval': max(1, math.ceil(length / max(val_points, 1)))}


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as a user can type it here: relative to the current folder when inside it."""
    try:
        return str(Path(path).absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def python_command() -> str:
    """The interpreter running the demo, as a user can type it: relative to the current
    folder when inside it (``.venv/bin/python``), else its full path."""
    return shown_path(sys.executable)


def _pictures(name: str, runner, work_dir: Path) -> list[str]:
    """Ground truth | prediction for a few validation images, and the training curve."""
    from mmengine.runner import EpochBasedTrainLoop

    # in-function: the prediction pictures import mmdet and mmseg (each optional)
    from ..visualization.predictions import (draw_val_predictions, plot_training_curve,
                                             read_scalars)
    out = work_dir / 'pictures'
    paths = draw_val_predictions(runner, out, PICTURES)[-1:]  # the stacked picture
    scale = (len(runner.train_dataloader)
             if isinstance(runner.train_loop, EpochBasedTrainLoop) else 1)
    records = read_scalars(runner.log_dir)
    curve = plot_training_curve(records, CURVE_METRIC[name], out / 'training_curve.png', scale,
                                curve_title(name, records))
    return [str(p) for p in (*paths, curve)]


def curve_title(name: str, records: list[dict]) -> str:
    """The training curve's title; when no validation reported the stage's metric (e.g.
    CocoMetric when no box passed the score threshold) it says so, on the picture and here,
    rather than drawing the loss alone without a word."""
    title = f'demo {name}'
    if any(CURVE_METRIC[name] in r for r in records):
        return title
    label = CURVE_LABEL[name]
    print(f'{name}: training_curve.png has the loss only: no validation reported {label} '
          '(the model predicted nothing), so no metric series is drawn')
    return f'{title} (no val {label}: validation reported nothing)'


def _train_and_test(name: str, config: str, work_dir: Path, length: int | None,
                    metric_keys: dict[str, str], val_points: int = VAL_POINTS) -> StageResult:
    _banner(f'{name}: train and validate  ({config})')
    start = time.perf_counter()
    cfg = load_config(config, None, str(work_dir))
    _set_length(cfg, length)
    cfg.merge_from_dict(_val_interval(cfg, val_points))
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
    checkpoint = _final_link(latest_checkpoint(work_dir), work_dir)
    try:
        pictures = _pictures(name, runner, work_dir)
    except Exception as e:  # the metrics stand without the pictures
        print(f'{name}: the pictures could not be drawn: {type(e).__name__}: {e}')
        pictures = []
    return StageResult(name, picked, time.perf_counter() - start, train_seconds, runner.iter,
                       config, checkpoint, pictures)


def _final_link(checkpoint: str | None, work_dir: Path) -> str:
    """``work_dir/final.pth``, a link to the stage's last checkpoint (its epoch or iteration
    count follows the plan), so commands can name one path; the checkpoint if no link."""
    if checkpoint is None:
        raise RuntimeError(f'{work_dir}: training saved no checkpoint (no last_checkpoint)')
    link = work_dir / 'final.pth'
    try:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(checkpoint).name)
    except OSError:
        return str(checkpoint)
    return str(link)


def _configured_work(args: argparse.Namespace) -> Work:
    from mmengine.config import Config
    det = Config.fromfile(args.det_config)
    seg = Config.fromfile(args.seg_config)
    batch = det.train_dataloader.batch_size
    return Work(det_epochs=det.train_cfg.max_epochs,
                det_iters_per_epoch=math.ceil(args.num_train / batch),
                seg_iters=seg.train_cfg.max_iters)


def _plan(args: argparse.Namespace, elapsed: float) -> tuple[Plan, Speed | None]:
    """The stages' lengths: as configured (or given) when there is no budget or the lengths
    were given, else measured and fitted (:mod:`pvt_mm.demo.plan`)."""
    work = _configured_work(args)
    fixed = Plan(args.det_epochs or work.det_epochs, args.seg_iters or work.seg_iters,
                 VAL_POINTS, not args.skip_seg, math.nan)
    if args.time_budget <= 0 or args.det_epochs or args.seg_iters:
        return fixed, None
    _banner('timing a few iterations of each stage')
    start = time.perf_counter()
    probe_dir = Path(args.work_dir) / 'speed_probe'
    det_cfg = load_config(args.det_config, None, str(probe_dir))
    seg_cfg = None if args.skip_seg else load_config(args.seg_config, None, str(probe_dir))
    speed = measure_speed(det_cfg, seg_cfg, str(probe_dir))
    shutil.rmtree(probe_dir, ignore_errors=True)
    elapsed += time.perf_counter() - start
    plan = plan_demo(speed, args.time_budget - elapsed, work, with_seg=not args.skip_seg)
    print(f'seconds per iteration: detection {speed.det_step_s:.2f}, segmentation '
          f'{speed.seg_step_s:.2f} ({speed.slowness:.2f}x the reference host; probe '
          f'{time.perf_counter() - start:.0f} s)')
    print(f'plan: detection {plan.det_epochs} epochs'
          + (f', segmentation {plan.seg_iters} iterations' if plan.run_seg else '')
          + f', {plan.val_points} validation(s) each; about {plan.estimate_s:.0f} s of the '
          f'{args.time_budget - elapsed:.0f} s left' + (f'\n  {plan.note}' if plan.note else ''),
          flush=True)
    return plan, speed


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
        print(f'  {env}{python_command()} {shown_path(TEST_TOOL)} {shown_path(r.config)} '
              f'{shown_path(r.checkpoint)}')
    print(flush=True)


def run_demo(argv: Sequence[str] | None = None, started: float | None = None) -> int:
    """Run the demo; returns the exit status (1 if bbox mAP@0.5 is below ``--min-map50`` or
    the segmentor's mIoU below ``--min-miou``). Without given lengths and with a time budget,
    the stages' lengths come from a timed probe (:func:`_plan`, :mod:`pvt_mm.demo.plan`).

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
    plan, speed = _plan(args, time.perf_counter() - start)
    results = [_train_and_test('detection', args.det_config, work_dir / 'det', plan.det_epochs,
                               DET_METRICS, plan.val_points)]
    skipped = '' if plan.run_seg else plan.note
    seg_iters = plan.seg_iters
    if plan.run_seg and speed is not None:
        planned = det_seconds(plan.det_epochs, plan.val_points, _configured_work(args), speed)
        seg_iters, note = replan_seg(plan, speed, args.time_budget - (time.perf_counter() - start),
                                     planned, results[0].seconds)
        if note:
            print(f'\n{note}')
        skipped = note if not seg_iters else ''
    if plan.run_seg and seg_iters:
        results.append(_train_and_test('segmentation', args.seg_config, work_dir / 'seg',
                                       seg_iters, SEG_METRICS, plan.val_points))
    elif not args.skip_seg:
        print(f'\n{skipped}. Run it alone with\n  {python_command()} '
              f'{shown_path(TEST_TOOL.with_name("train.py"))} {shown_path(args.seg_config)}  '
              '(or the demo with --time-budget 0)')
    _report(results, time.perf_counter() - start, data_seconds, args.data_root)
    return _verdict(results, args)


def _verdict(results: list[StageResult], args: argparse.Namespace) -> int:
    """0 when every stage that ran reaches its quality target, else 1 (each one said)."""
    status = 0
    targets = {'detection': ('bbox mAP@0.5', args.min_map50, '{:.3f}'),
               'segmentation': ('mIoU %', args.min_miou, '{:.1f}')}
    for r in results:
        key, target, fmt = targets[r.name]
        value = r.metrics[key]
        reached = value >= target
        status |= not reached
        print(f'{r.name}: {key.rstrip(" %")} {fmt.format(value)} '
              f'{"reaches" if reached else "is below"} the target {target}')
    return int(status)
