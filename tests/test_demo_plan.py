"""The demo's plan (pvt_mm.demo.plan): both stages fit into the time budget on slower hosts,
at schedules no shorter than the quality targets need, from a speed probe that times real
training iterations; and what the demo prints (commands with the running python, a curve
that says when validation reported nothing)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from pvt_mm.demo.plan import (MIN_DET_EPOCHS, MIN_SEG_ITERS, VAL_POINTS, Plan, Speed, Work,
                              det_seconds, plan_demo, replan_seg, seg_seconds)

ROOT = Path(__file__).resolve().parents[1]
WORK = Work(det_epochs=10, det_iters_per_epoch=38, seg_iters=500)
REFERENCE = Speed(det_step_s=0.65, seg_step_s=0.42)  # the idle reference host


def _slower(factor: float) -> Speed:
    return Speed(REFERENCE.det_step_s * factor, REFERENCE.seg_step_s * factor)


# ---- the plan --------------------------------------------------------------------------------


def test_plan_keeps_the_configured_demo_where_it_fits():
    plan = plan_demo(REFERENCE, 590, WORK)
    assert (plan.det_epochs, plan.seg_iters, plan.val_points, plan.run_seg) == \
        (10, 500, VAL_POINTS, True)
    assert plan.estimate_s <= 590


@pytest.mark.parametrize('factor', [1.2, 1.38, 1.5])
def test_plan_fits_both_tasks_on_slower_hosts(factor):
    """The host that ran detection in 390 s (1.38x) gets both tasks within the budget, at
    schedules no shorter than the ones that keep the quality targets."""
    speed, budget = _slower(factor), 585.0
    plan = plan_demo(speed, budget, WORK)
    assert plan.run_seg
    assert plan.det_epochs >= MIN_DET_EPOCHS and plan.seg_iters >= MIN_SEG_ITERS
    assert plan.estimate_s <= budget
    assert det_seconds(plan.det_epochs, plan.val_points, WORK, speed) + \
        seg_seconds(plan.seg_iters, plan.val_points, speed) <= budget


def test_plan_cuts_validations_before_training():
    speed = _slower(1.1)
    full = det_seconds(10, VAL_POINTS, WORK, speed) + seg_seconds(500, VAL_POINTS, speed)
    plan = plan_demo(speed, full / 0.95 - 5, WORK)  # just short of the full demo
    assert (plan.det_epochs, plan.seg_iters) == (10, 500)
    assert plan.val_points < VAL_POINTS and 'validation' in plan.note


def test_plan_skips_segmentation_only_as_a_last_resort_and_says_what_it_needs():
    plan = plan_demo(_slower(3.0), 585, WORK)
    assert not plan.run_seg and plan.det_epochs == MIN_DET_EPOCHS
    assert re.search(r'segmentation skipped: it needs about \d+ s at its minimum of 300',
                     plan.note)


def test_plan_without_budget_or_segmentation():
    assert plan_demo(_slower(5), 0, WORK) == Plan(10, 500, VAL_POINTS, True,
                                                  plan_demo(_slower(5), 0, WORK).estimate_s)
    det_only = plan_demo(_slower(1.6), 585, WORK, with_seg=False)
    assert not det_only.run_seg and det_only.det_epochs == 10


def test_replan_shortens_or_skips_segmentation_after_a_slow_detection():
    plan = plan_demo(REFERENCE, 590, WORK)
    planned = det_seconds(plan.det_epochs, plan.val_points, WORK, REFERENCE)
    iters, note = replan_seg(plan, REFERENCE, 590 - planned - 10, planned, planned, WORK)
    assert iters == 500 and not note
    iters, note = replan_seg(plan, REFERENCE, 590 - planned * 1.3, planned, planned * 1.3, WORK)
    assert MIN_SEG_ITERS <= iters < 500 and 'shortened' in note
    iters, note = replan_seg(plan, REFERENCE, 60, planned, planned * 2, WORK)
    assert iters == 0 and 'segmentation skipped: it needs about' in note


# ---- the speed probe and run_demo's planning step ---------------------------------------------


def test_probe_times_real_training_iterations(tmp_path, monkeypatch):
    """The speed probe runs the stage's own pipeline for a few iterations (no validation,
    checkpoint or schedule) and returns one time per iteration."""
    from pvt_mm.demo import DemoDataSpec, make_demo_data
    from pvt_mm.demo.pipeline import DATA_ENV, DET_CONFIG
    from pvt_mm.demo.plan import _step_times
    from pvt_mm.engine.runtime import load_config
    make_demo_data(tmp_path / 'data', DemoDataSpec(num_train=4, num_val=2))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / 'data'))
    cfg = load_config(DET_CONFIG, {'train_dataloader.batch_size': 2,
                                   'train_dataloader.num_workers': 0,
                                   'train_dataloader.persistent_workers': False},
                      str(tmp_path / 'probe'))
    times = _step_times(cfg, 3)
    assert len(times) == 3 and all(t > 0 for t in times)
    assert not list((tmp_path / 'probe').rglob('*.pth'))  # no checkpoint written


def test_demo_plans_from_the_measured_speed(monkeypatch, capsys):
    """run_demo's planning step: a slow host (probe) gets both stages, shortened."""
    from pvt_mm.demo import pipeline
    slow = _slower(1.38)
    monkeypatch.setattr(pipeline, 'measure_speed', lambda *a, **k: slow)
    plan, speed = pipeline._plan(pipeline.parse_args([]), elapsed=20.0)
    assert speed == slow and plan.run_seg
    assert plan.det_epochs >= MIN_DET_EPOCHS and plan.seg_iters >= MIN_SEG_ITERS
    assert (plan.det_epochs, plan.seg_iters) != (10, 500)
    assert 'plan: detection' in capsys.readouterr().out
    fixed, none = pipeline._plan(pipeline.parse_args(['--det-epochs', '2']), elapsed=0.0)
    assert none is None and fixed.det_epochs == 2  # given lengths run as given


# ---- what the demo prints ---------------------------------------------------------------------


def test_demo_prints_commands_with_the_running_python(monkeypatch):
    from pvt_mm.demo.pipeline import python_command
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, 'executable', str(ROOT / '.venv/bin/python'))
    assert python_command() == '.venv/bin/python'
    monkeypatch.setattr(sys, 'executable', '/opt/py/bin/python3')
    assert python_command() == '/opt/py/bin/python3'


def test_demo_curve_says_when_validation_reported_nothing(capsys):
    from pvt_mm.demo.pipeline import curve_title
    records = [{'step': 1, 'loss': 1.0}, {'step': 2, 'loss': 0.9}]
    assert 'validation reported nothing' in curve_title('detection', records)
    assert 'no validation reported mAP@0.5' in capsys.readouterr().out
    records.append({'step': 1, 'coco/bbox_mAP_50': 0.3})
    assert curve_title('detection', records) == 'demo detection'
