"""Fit both demo stages (detection and segmentation) into the time budget of the host it runs on.

:func:`measure_speed` times a few training iterations of each stage's real pipeline (model,
data loader, optimizer) at the start; :func:`plan_demo` turns those seconds per iteration into
a schedule that fits the remaining budget:

1. the configured lengths with :data:`VAL_POINTS` validations, when they fit;
2. else fewer validations along the way (the last one, which gives the metrics, stays);
3. else both stages shortened in proportion, down to the shortest schedules that still reach
   the quality targets (:data:`MIN_DET_EPOCHS`, :data:`MIN_SEG_ITERS`);
4. only when even those do not fit is the segmentation stage skipped, saying how much time it
   needed; the detector then runs at what fits (never below its minimum).

After detection, :func:`replan_seg` re-fits the segmentor into what is left, from the time
detection actually took (the host may have become slower or faster than its probe said).
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..engine.runtime import build_runner

VAL_POINTS = 3  # validations over training (the curve's points); the last gives the metrics
# cost of one validation pass over the 100 demo images, in training iterations of that stage
DET_VAL_ITERS = 10.0
SEG_VAL_ITERS = 8.0
# each stage's fixed cost besides its iterations (runner and model build, data workers, the
# pictures at the end), in seconds on the reference host, scaled by the measured slowness
STAGE_OVERHEAD_S = 12.0
REFERENCE_DET_STEP_S = 0.65  # a detector iteration on the idle reference host (2 cores)
SAFETY = 0.95  # plan to use this share of what is left, for timing noise
# The shortest schedules that keep the quality targets (estimated from the configured runs:
# 10 epochs gave bbox mAP@0.5 0.586 and 12 gave 0.656, about +0.035 an epoch; 500 iterations
# gave mIoU 51.6 % and 800 gave 64 %, about +4 points per 100 iterations).
MIN_DET_EPOCHS = 8  # mAP@0.5 target 0.5
MIN_SEG_ITERS = 300  # mIoU target 40 %
TARGET_MIOU = 40.0
SEG_ITER_ROUND = 10


@dataclass(frozen=True)
class Speed:
    """Seconds per training iteration of each stage, as measured on this host."""

    det_step_s: float
    seg_step_s: float

    @property
    def slowness(self) -> float:
        """This host against the reference host (1.0: as fast; 2.0: twice as slow)."""
        return self.det_step_s / REFERENCE_DET_STEP_S


@dataclass(frozen=True)
class Work:
    """The configured demo: detector epochs (and iterations per epoch), segmentor iterations."""

    det_epochs: int = 10
    det_iters_per_epoch: int = 38  # 600 images, batch 16
    seg_iters: int = 500
    min_det_epochs: int = MIN_DET_EPOCHS
    min_seg_iters: int = MIN_SEG_ITERS


@dataclass(frozen=True)
class Plan:
    """What the demo runs: lengths, validations per stage, whether segmentation runs, and the
    estimated seconds (``note`` says what was cut and why)."""

    det_epochs: int
    seg_iters: int
    val_points: int
    run_seg: bool
    estimate_s: float
    note: str = ''


def stage_overhead(speed: Speed) -> float:
    return STAGE_OVERHEAD_S * max(speed.slowness, 1.0)


def det_seconds(epochs: int, val_points: int, work: Work, speed: Speed) -> float:
    """Estimated seconds of the detection stage."""
    iters = epochs * work.det_iters_per_epoch + val_points * DET_VAL_ITERS
    return iters * speed.det_step_s + stage_overhead(speed)


def seg_seconds(iters: int, val_points: int, speed: Speed) -> float:
    """Estimated seconds of the segmentation stage."""
    return (iters + val_points * SEG_VAL_ITERS) * speed.seg_step_s + stage_overhead(speed)


def _seg_fit(seconds: float, val_points: int, speed: Speed, work: Work) -> int:
    """The most segmentor iterations (a multiple of ten, at most the configured number) whose
    stage fits in ``seconds``; 0 when not even ``work.min_seg_iters`` fit."""
    room = seconds - stage_overhead(speed) - val_points * SEG_VAL_ITERS * speed.seg_step_s
    iters = int(room / speed.seg_step_s) // SEG_ITER_ROUND * SEG_ITER_ROUND
    iters = min(iters, work.seg_iters)
    return iters if iters >= work.min_seg_iters else 0


def plan_demo(speed: Speed, budget_s: float, work: Work = Work(), with_seg: bool = True
              ) -> Plan:
    """The schedule that fits ``budget_s`` seconds (what is left of the time budget), by the
    steps of the module docstring; ``budget_s <= 0`` or ``math.inf``: no limit."""
    usable = budget_s * SAFETY if budget_s > 0 else math.inf
    work = replace(work, min_det_epochs=min(work.min_det_epochs, work.det_epochs),
                   min_seg_iters=min(work.min_seg_iters, work.seg_iters))

    def total(epochs: int, iters: int, vals: int) -> float:
        seg = seg_seconds(iters, vals, speed) if with_seg else 0.0
        return det_seconds(epochs, vals, work, speed) + seg

    for vals in range(VAL_POINTS, 0, -1):  # 1. and 2.: full lengths, fewer validations
        t = total(work.det_epochs, work.seg_iters, vals)
        if t <= usable:
            note = '' if vals == VAL_POINTS else (
                f'{vals} validation(s) per stage instead of {VAL_POINTS} to fit the budget')
            return Plan(work.det_epochs, work.seg_iters, vals, with_seg, t, note)
    vals = 1
    # 3. both stages shortened in proportion to fit, down to their minimums
    fixed = total(0, 0, vals)
    det_iter_s = work.det_iters_per_epoch * speed.det_step_s
    train_full = work.det_epochs * det_iter_s + (work.seg_iters * speed.seg_step_s
                                                 if with_seg else 0.0)
    scale = max(0.0, (usable - fixed) / train_full)
    epochs = max(work.min_det_epochs, min(work.det_epochs, math.floor(work.det_epochs * scale)))
    if not with_seg:
        t = total(epochs, 0, vals)
        note = f'detection shortened to {epochs} epochs to fit the budget'
        if t > usable:
            note = (f'detection needs about {t:.0f} s at its minimum of {epochs} epochs, past '
                    f'the {budget_s:.0f} s left: it runs anyway')
        return Plan(epochs, 0, vals, False, t, note)
    left = usable - det_seconds(epochs, vals, work, speed)
    iters = _seg_fit(left, vals, speed, work)
    if iters:
        t = total(epochs, iters, vals)
        return Plan(epochs, iters, vals, True, t,
                    f'shortened to fit the budget: detection {epochs} of {work.det_epochs} '
                    f'epochs, segmentation {iters} of {work.seg_iters} iterations, '
                    f'{vals} validation per stage')
    # 4. the last resort: the segmentor does not fit even at its minimum
    need = seg_seconds(work.min_seg_iters, vals, speed)
    det_only = plan_demo(speed, budget_s, work, with_seg=False)
    return replace(det_only, note=(
        f'segmentation skipped: it needs about {need:.0f} s at its minimum of '
        f'{work.min_seg_iters} iterations, and detection at its minimum of '
        f'{work.min_det_epochs} epochs leaves {max(left, 0.0):.0f} s of the '
        f'{budget_s:.0f} s budget; {det_only.note}'.rstrip('; ')))


def replan_seg(plan: Plan, speed: Speed, budget_left_s: float, det_planned_s: float,
               det_actual_s: float, work: Work = Work()) -> tuple[int, str]:
    """Segmentor iterations for what is left after detection, its speed corrected by how much
    slower (or faster) detection ran than estimated; (0, reason) when it no longer fits."""
    if budget_left_s <= 0 or math.isinf(budget_left_s):
        return plan.seg_iters, ''
    drift = max(det_actual_s / max(det_planned_s, 1e-9), 0.25)
    corrected = replace(speed, seg_step_s=speed.seg_step_s * drift)
    iters = min(plan.seg_iters, _seg_fit(budget_left_s * SAFETY, plan.val_points, corrected,
                                         work) or 0)
    if iters >= work.min_seg_iters:
        note = '' if iters == plan.seg_iters else (
            f'segmentation shortened to {iters} iterations: detection took {det_actual_s:.0f} s '
            f'(planned {det_planned_s:.0f} s)')
        return iters, note
    need = seg_seconds(work.min_seg_iters, plan.val_points, corrected)
    return 0, (f'segmentation skipped: it needs about {need:.0f} s at its minimum of '
               f'{work.min_seg_iters} iterations, {max(budget_left_s, 0):.0f} s are left '
               f'(detection took {det_actual_s:.0f} s, planned {det_planned_s:.0f} s)')


# ---- measuring ----------------------------------------------------------------------------
def _step_times(cfg: Any, iters: int) -> list[float]:
    """Seconds of each of ``iters`` training iterations of ``cfg``'s real pipeline (model,
    data loader, optimizer), through an mmengine Runner with an iteration loop and no
    validation, checkpoints or logs."""
    from mmengine.hooks import Hook

    marks: list[float] = []

    class _Clock(Hook):
        def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
            marks.append(time.perf_counter())

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            marks.append(time.perf_counter())

    cfg = copy.deepcopy(cfg)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=10 ** 9)
    for key in ('val_cfg', 'val_dataloader', 'val_evaluator', 'test_cfg', 'test_dataloader',
                'test_evaluator', 'param_scheduler', 'load_from'):
        cfg[key] = None
    cfg.resume = False
    cfg.log_level = 'WARNING'
    hooks = {k: v for k, v in (cfg.get('default_hooks') or {}).items() if k != 'visualization'}
    cfg.default_hooks = {**hooks, 'checkpoint': None, 'logger': None}  # None: not registered
    cfg.custom_hooks = []
    runner = build_runner(cfg)
    runner.register_hook(_Clock(), 'LOWEST')
    runner.train()
    return [b - a for a, b in zip(marks[0::2], marks[1::2])]


def per_iteration(times: Sequence[float]) -> float:
    """Seconds per iteration: the median after the first (warm-up) iteration."""
    return statistics.median(times[1:] if len(times) > 1 else times)


def measure_speed(det_cfg: Any, seg_cfg: Any | None, work_dir: str, iters: int = 4) -> Speed:
    """Time ``iters`` iterations of each stage (configs as loaded by
    :func:`pvt_mm.engine.runtime.load_config`) in throwaway runners under ``work_dir``;
    without a segmentor config its speed is taken as half the detector's."""
    import os.path as osp
    det_cfg = copy.deepcopy(det_cfg)
    det_cfg.work_dir = osp.join(work_dir, 'det')
    det = per_iteration(_step_times(det_cfg, iters))
    if seg_cfg is None:
        return Speed(det, det * 0.5)
    seg_cfg = copy.deepcopy(seg_cfg)
    seg_cfg.work_dir = osp.join(work_dir, 'seg')
    return Speed(det, per_iteration(_step_times(seg_cfg, iters + 2)))
