"""What trips a new user (issue 21): input errors as one message (``--debug`` for the
traceback) naming every missing input at once, ``--help`` texts, commands that work as printed
(the repository's python), the swap sweep leaving the shipped table alone and printing one line
per config, the demo's plan fitting both stages into its budget, and the package layout (no
import cycles)."""
from __future__ import annotations

import ast
import logging
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pvt_mm.demo.plan import (MIN_DET_EPOCHS, MIN_SEG_ITERS, VAL_POINTS, Plan, Speed, Work,
                              det_seconds, plan_demo, replan_seg, seg_seconds)
from pvt_mm.engine import cli  # module import: pytest would collect cli.test_main

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / '.venv' / 'bin' / 'python'
COCO_CONFIG = str(ROOT / 'configs/retinanet_pvt_s_fpn_1x_coco.py')

# ---- input errors: one message, all missing inputs at once, --debug ---------------------------


def test_train_reports_missing_data_and_weights_in_one_message(tmp_path, capsys, monkeypatch):
    """Missing COCO and missing pretrained weights: both named in one run, no traceback."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))  # an empty hub cache
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    options = ['--work-dir', str(tmp_path / 'w'), '--cfg-options',
               f'train_dataloader.dataset.data_root={tmp_path}/nowhere/']
    status = cli.train_tool([COCO_CONFIG, *options])
    err = capsys.readouterr().err
    err = err[err.index('train.py: '):]  # (in-process: earlier warnings of imports)
    assert status == 1
    assert '2 inputs are missing' in err and 'Traceback' not in err
    assert 'instances_train2017.json does not exist' in err
    assert "pretrained checkpoint 'https://github.com/whai362/PVT/releases/download/v2/" \
           "pvt_small.pth' not found" in err
    assert len(err.strip().splitlines()) == 3  # the header and one line per missing input
    with pytest.raises(cli.InputsMissing, match='2 inputs are missing'):
        cli.train_tool([COCO_CONFIG, *options, '--debug'])  # the traceback, unhandled


def test_test_tool_names_the_checkpoint_and_the_data(tmp_path, capsys):
    status = cli.test_tool([COCO_CONFIG, str(tmp_path / 'missing.pth'), '--work-dir',
                            str(tmp_path / 'w'), '--cfg-options',
                            f'test_dataloader.dataset.data_root={tmp_path}/nowhere/'])
    err = capsys.readouterr().err
    assert status == 1 and 'Traceback' not in err
    assert 'checkpoint not found' in err and 'instances_val2017.json does not exist' in err


def test_tools_print_one_line_for_a_missing_file(tmp_path):
    """The tools as a user runs them: one line on stderr, exit 1; --debug: the traceback."""
    env = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}
    convert = subprocess.run(
        [sys.executable, str(ROOT / 'tools/convert_checkpoint.py'), str(tmp_path / 'no.pth'),
         str(tmp_path / 'out.pth')], capture_output=True, text=True, env=env, timeout=120)
    assert convert.returncode == 1 and 'no.pth' in convert.stderr
    assert convert.stderr.strip().count('\n') == 0, convert.stderr
    train = [sys.executable, str(ROOT / 'tools/train.py'), str(tmp_path / 'missing.py')]
    run = subprocess.run(train, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 1 and run.stderr.strip().count('\n') == 0, run.stderr
    assert 'missing.py' in run.stderr and 'Traceback' not in run.stderr
    debug = subprocess.run(train + ['--debug'], capture_output=True, text=True, env=env,
                           timeout=120)
    assert debug.returncode == 1 and 'Traceback' in debug.stderr


def test_safetensors_written_with_the_same_mode_as_pth(tmp_path):
    from pvt_mm.checkpoint import write_checkpoint
    state = {'w': torch.zeros(2)}
    modes = {suffix: stat.S_IMODE(write_checkpoint(state, tmp_path / f'x{suffix}').stat().st_mode)
             for suffix in ('.pth', '.safetensors')}
    umask = os.umask(0o22)
    os.umask(umask)
    assert modes['.safetensors'] == modes['.pth'] == 0o666 & ~umask


# ---- --help and printed commands -------------------------------------------------------------


def _tool_docstrings() -> dict[str, str]:
    out = {}
    for path in sorted((ROOT / 'tools').glob('*.py')):
        src = path.read_text()
        body = ast.parse(src).body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            out[path.name] = ast.get_source_segment(src, body[0])
    return out


def test_tool_docstrings_keep_their_line_continuations():
    """A ``\\`` at a line end inside a (non-raw) docstring joins the lines in ``--help``
    (RawDescriptionHelpFormatter shows the docstring as is): write ``\\\\``."""
    broken = [name for name, seg in _tool_docstrings().items()
              if seg[:1] not in 'rR' and re.search(r'(?<!\\)(\\\\)*\\\n', seg)]
    assert not broken


def test_dist_scripts_default_to_the_repository_python(tmp_path):
    """``tools/dist_train.sh`` without PYTHON= runs the repository's .venv, not ``python``."""
    if not VENV_PYTHON.is_file():
        pytest.skip('no .venv in this checkout')
    script = tmp_path / 'which.py'
    script.write_text('import sys, torch; print("EXE", sys.executable)\n')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHON'}
    env['PATH'] = '/usr/bin:/bin'  # a `python` here (if any) has no torch
    env['PORT'] = str(29500 + os.getpid() % 1000)
    run = subprocess.run(['bash', str(ROOT / 'tools/torchrun.sh'), '1', str(script)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f'EXE {VENV_PYTHON}' in run.stdout


def test_demo_prints_commands_with_the_running_python(monkeypatch):
    from pvt_mm.demo.pipeline import python_command
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, 'executable', str(ROOT / '.venv/bin/python'))
    assert python_command() == '.venv/bin/python'
    monkeypatch.setattr(sys, 'executable', '/opt/py/bin/python3')
    assert python_command() == '/opt/py/bin/python3'


def test_demo_curve_says_when_validation_reported_nothing(tmp_path, capsys):
    from pvt_mm.demo.pipeline import curve_title
    records = [{'step': 1, 'loss': 1.0}, {'step': 2, 'loss': 0.9}]
    assert 'validation reported nothing' in curve_title('detection', records)
    assert 'no validation reported mAP@0.5' in capsys.readouterr().out
    records.append({'step': 1, 'coco/bbox_mAP_50': 0.3})
    assert curve_title('detection', records) == 'demo detection'


def test_export_without_checkpoint_says_random_weights(tmp_path):
    cmd = [sys.executable, str(ROOT / 'tools/export_onnx.py'), '--arch', 'b0', '--out',
           str(tmp_path / 'b0.onnx'), '--shape', '64']
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert 'RANDOM weights' in run.stderr


def test_exports_and_conversions_in_the_repository_root_are_ignored():
    names = ['pvt_v2_b2.onnx', 'atss.onnx', 'pvt_v2_b2.safetensors', 'x.pth']
    run = subprocess.run(['git', 'check-ignore', *names], cwd=ROOT, capture_output=True,
                         text=True)
    assert sorted(run.stdout.split()) == sorted(names)


# ---- the swap sweep --------------------------------------------------------------------------


def _swap_tool():
    sys.path.insert(0, str(ROOT / 'tools'))
    try:
        import swap_backbone
    finally:
        sys.path.remove(str(ROOT / 'tools'))
    return swap_backbone


def test_partial_sweep_does_not_replace_the_shipped_table():
    tool = _swap_tool()
    partial = tool.parse_args(['--sweep', 'mmdet', '--only', 'fcos', 'yolof'])
    assert partial.markdown != tool.SHIPPED_TABLE
    assert partial.markdown.parent == tool.PARTIAL_TABLE_DIR
    assert tool.parse_args(['--sweep', 'all', '--arch', 'b0']).markdown == tool.SHIPPED_TABLE
    assert tool.parse_args(['--sweep', 'all', '--arch', 'b2']).markdown != tool.SHIPPED_TABLE
    asked = tool.parse_args(['--sweep', 'mmdet', '--only', 'fcos', '--markdown', 'x.md'])
    assert asked.markdown == Path('x.md')


def test_sweep_builds_are_quiet(capsys):
    """Model builds log every parameter's init at INFO: silenced while the sweep builds."""
    from mmengine.logging import MMLogger, print_log

    from pvt_mm.swap.sweep import quiet_builds
    logger = MMLogger.get_instance('test_quiet_sweep', log_level='INFO')
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        with quiet_builds():
            print_log('init message', logger='current')
            print('printed by a package')
        print_log('after', logger='current')
    finally:
        logger.removeHandler(handler)
    assert seen == ['after']
    assert 'printed by a package' not in capsys.readouterr().out


# ---- the demo's plan -------------------------------------------------------------------------
WORK = Work(det_epochs=10, det_iters_per_epoch=38, seg_iters=500)
REFERENCE = Speed(det_step_s=0.65, seg_step_s=0.42)  # the idle reference host


def _slower(factor: float) -> Speed:
    return Speed(REFERENCE.det_step_s * factor, REFERENCE.seg_step_s * factor)


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


# ---- layout ----------------------------------------------------------------------------------


def _module_imports() -> dict[str, set[str]]:
    """pvt_mm module -> the pvt_mm modules it imports (anywhere in the file)."""
    paths = {}
    for path in (ROOT / 'pvt_mm').rglob('*.py'):
        parts = list(path.relative_to(ROOT).with_suffix('').parts)
        paths['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
    graph = {}
    for name, path in paths.items():
        package = name if path.name == '__init__.py' else name.rpartition('.')[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in paths}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ''
                if node.level:
                    parts = package.split('.')[:len(package.split('.')) - node.level + 1]
                    base = '.'.join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f'{base}.{alias.name}'
                    found.add(full if full in paths else base)
        graph[name] = {m for m in found if m in paths and m != name}
    return graph


PENDING_CYCLES: set[str] = set()  # none left; nothing may be added here


def test_no_import_cycles_between_modules():
    """No module imports one that (directly or not) imports it back: lazy imports inside
    functions count, ``if TYPE_CHECKING:`` imports too (move the shared piece down instead)."""
    graph = _module_imports()
    in_cycles = set()
    for start in graph:  # every module that can reach itself again
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
        if start in seen:
            in_cycles.add(start)
    assert not in_cycles - PENDING_CYCLES, sorted(in_cycles - PENDING_CYCLES)


def test_swap_is_one_package_with_the_public_names():
    from pvt_mm import swap
    assert (ROOT / 'pvt_mm/swap/__init__.py').is_file()
    assert not (ROOT / 'pvt_mm/swap.py').exists()
    for name in ('swap_config', 'swap_overrides', 'swap_backbone', 'load_config', 'SwapError'):
        assert callable(getattr(swap, name))
