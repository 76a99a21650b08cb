"""What the tools tell a user (issue 21): an input error is one message naming every missing
input at once (``--debug`` for the traceback), ``--help`` texts keep their line continuations,
and the commands and notes the tools print work as printed (the repository's python, random
weights said so)."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_export_without_checkpoint_says_random_weights(tmp_path):
    cmd = [sys.executable, str(ROOT / 'tools/export_onnx.py'), '--arch', 'b0', '--out',
           str(tmp_path / 'b0.onnx'), '--shape', '64']
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert 'RANDOM weights' in run.stderr
