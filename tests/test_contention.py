"""The benchmark's load check and its busy-neighbour (contention) case, on tiny inputs.

Speed is not asserted: that the loaded rows exist beside the idle ones, that the neighbour
really runs only while a loaded step runs and is gone when the tool ends (also on Ctrl-C), and
that a busy machine is reported as such in the printed output, the Markdown and the plot.
"""
from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest

from pvt_mm.analysis import machine_load
from pvt_mm.analysis.machine_load import BusyNeighbour, LoadReport

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--arch', 'b0', '--shape', '64', '--runs', '1', '--warmup', '0', '--mode', 'fp32',
        '--peers', '--memory-modes']


def _tool():
    spec = importlib.util.spec_from_file_location('benchmark_tool', ROOT / 'tools' / 'benchmark.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_neighbour_spins_only_while_busy_and_dies_with_its_owner(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the machine: this process's one thread and one more runnable task
    monkeypatch.setattr(machine_load, 'runnable_tasks', lambda: 2)
    monkeypatch.setattr(machine_load, 'own_running_threads', lambda: 1)
    with BusyNeighbour(max_s=60) as n:
        assert not machine_load._running(n.pid)  # paused (SIGSTOP) until asked
        assert machine_load.others_runnable() == 1  # the other task is someone else's
        with n.busy():
            time.sleep(0.1)
            assert machine_load._running(n.pid)
            assert machine_load.others_runnable() == 0  # our own child: not "others"
        time.sleep(0.05)
        assert not machine_load._running(n.pid)
    assert _gone(n.pid)
    short = BusyNeighbour(max_s=0.2)  # its own time bound
    with short.busy():
        short.proc.wait(timeout=30)
    with pytest.raises(RuntimeError, match='busy neighbour process is gone'):
        with short.busy():
            pass
    short.close()


def test_load_report_idle_rule() -> None:
    assert LoadReport((0.1, 0.2, 0.3), 0, others=[0] * 20).idle
    assert not LoadReport((0.9, 0.2, 0.3), 0).idle  # load average at the start
    assert not LoadReport((0.1, 0.2, 0.3), 1).idle  # someone runnable at the start
    busy = LoadReport((0.1, 0.2, 0.3), 0, others=[0] * 8 + [1] * 2 + [2] * 2)
    assert not busy.idle and 'not idle' in busy.warning()
    assert '33% of 12 samples' in busy.lines()['load during the run (other processes runnable)']


def test_contention_run_reports_both_cases_and_the_load(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    pids = []
    real_init = BusyNeighbour.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        pids.append(self.pid)
    monkeypatch.setattr(BusyNeighbour, '__init__', init)
    # a machine where another process is always runnable: the report must say so
    monkeypatch.setattr(machine_load, 'others_runnable', lambda exclude=(): 2)
    md, png = tmp_path / 'r.md', tmp_path / 'r.png'
    _tool().main([*TINY, '--threads', '1', '--contention', '120', '--markdown', str(md),
                  '--plot', str(png)])
    out = capsys.readouterr().out
    assert 'pvt_mm b0 [1 busy neighbour]' in out
    assert 'fp32 64x64 batch 1: pvt_mm b0: idle ' in out and 'with 1 busy neighbour' in out
    assert 'WARNING: the machine was not idle' in out
    text = md.read_text()
    assert '| pvt_mm b0 [1 busy neighbour] | fp32 |' in text
    assert '- load before the run' in text and '- machine idle: NO' in text
    assert png.exists()
    assert len(pids) == 1 and _gone(pids[0])  # stopped by the tool

    # quiet machine: no warning; Ctrl-C during the run still ends the neighbour
    monkeypatch.setattr(machine_load, 'others_runnable', lambda exclude=(): 0)
    monkeypatch.setattr(machine_load.os, 'getloadavg', lambda: (0.1, 0.1, 0.1))
    tool = _tool()
    tool.main(TINY)
    out = capsys.readouterr().out
    assert 'machine idle: yes' in out and 'WARNING' not in out and 'neighbour' not in out

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(tool, 'run_benchmark', interrupted)
    with pytest.raises(KeyboardInterrupt):
        tool.main([*TINY, '--contention'])
    assert len(pids) == 2 and _gone(pids[1])
