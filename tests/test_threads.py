"""Thread counts from what the process may use (pvt_mm/models/fast/threads.py).

Fake cgroup files and a fake /proc/loadavg stand in for a container's quota and a busy
neighbour; a CPU affinity mask is set in a subprocess (OpenMP workers created under it would
stay pinned in this one). Each block and patch embedding of a CPU forward must run with the
chosen count and give torch's count back afterwards; a user's count is left alone.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pvt_mm.models.backbones import PVTv2
from pvt_mm.models.fast import threads as T

ROOT = Path(__file__).resolve().parents[1]


def _cgroup_v2(tmp: Path, limits: dict[str, str]) -> tuple[Path, Path]:
    """A v2 mount under ``tmp`` with ``cpu.max`` per relative dir; the process in 'a/b'."""
    for rel, value in limits.items():
        d = tmp / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / 'cpu.max').write_text(value + '\n')
    (tmp / 'a' / 'b').mkdir(parents=True, exist_ok=True)
    proc = tmp / 'cgroup'
    proc.write_text('0::/a/b\n')
    return tmp, proc


def test_cgroup_quota_v2_v1_and_none(tmp_path: Path) -> None:
    # v2: the smallest limit over the cgroup and its ancestors
    root, proc = _cgroup_v2(tmp_path / 'v2', {'': 'max 100000', 'a': '150000 100000',
                                              'a/b': '300000 100000'})
    assert T.cgroup_cpu_limit(root, proc) == 1.5
    root, proc = _cgroup_v2(tmp_path / 'v2none', {'': 'max 100000', 'a/b': 'max 100000'})
    assert T.cgroup_cpu_limit(root, proc) is None
    # v1: cpu,cpuacct controller, quota / period; -1 means none
    v1 = tmp_path / 'v1'
    d = v1 / 'cpu,cpuacct' / 'job'
    d.mkdir(parents=True)
    (d / 'cpu.cfs_quota_us').write_text('50000\n')
    (d / 'cpu.cfs_period_us').write_text('100000\n')
    proc = tmp_path / 'cgroup1'
    proc.write_text('4:memory:/job\n2:cpu,cpuacct:/job\n')
    assert T.cgroup_cpu_limit(v1, proc) == 0.5
    (d / 'cpu.cfs_quota_us').write_text('-1\n')
    assert T.cgroup_cpu_limit(v1, proc) is None
    assert T.cgroup_cpu_limit(tmp_path / 'absent', tmp_path / 'absent_file') is None


def test_choose_threads_rule() -> None:
    assert T.choose_threads(2, 2, 2, 0, True) == 2  # idle machine
    assert T.choose_threads(2, 2, 2, 1, True) == 1  # one busy neighbour on 2 CPUs
    assert T.choose_threads(2, 2, 2, 5, True) == 1  # never below one
    assert T.choose_threads(8, 2, 8, 0, True) == 2  # a quota of 2 CPUs
    assert T.choose_threads(8, 8, 64, 60, False) == 8  # a subset of a big host: load unused
    assert T.choose_threads(1, 4, 4, 0, True) == 1  # never above torch's count


@pytest.fixture
def two_threads(monkeypatch: pytest.MonkeyPatch):
    """torch at 2 threads, taken as its start-up count, on a 2-CPU machine, idle, no quota."""
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(T, '_STARTUP_THREADS', 2)
    monkeypatch.setattr(T, 'affinity_cpus', lambda: {0, 1})
    monkeypatch.setattr(T, 'online_cpus', lambda: 2)
    monkeypatch.setattr(T, 'cgroup_cpu_limit', lambda: None)
    monkeypatch.setattr(T, 'own_running_threads', lambda tasks=None: 1)
    for var in (*T.USER_ENV, T.ADAPT_ENV):
        monkeypatch.delenv(var, raising=False)
    T.set_adaptive_threads(None)
    T._quota = None
    yield
    T.set_adaptive_threads(None)
    T._quota = None
    torch.set_num_threads(prev)


def _loadavg(tmp: Path, runnable: int) -> Path:
    f = tmp / 'loadavg'
    f.write_text(f'1.00 1.00 1.00 {runnable}/300 4242\n')
    return f


def _threads_seen(model: PVTv2) -> list[int]:
    """torch's thread count inside every block and patch embedding of one forward."""
    seen: list[int] = []
    hooks = [m.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
             for name, m in model.named_modules() if name.endswith(('attn', 'patch_embed.proj'))]
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    return seen


def test_forward_threads_follow_load_quota_and_user(tmp_path: Path, two_threads,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model = PVTv2(arch='b0').eval()
    monkeypatch.setattr(T, 'PROC_LOADAVG', _loadavg(tmp_path, 1))  # only us
    assert set(_threads_seen(model)) == {2}
    monkeypatch.setattr(T, 'PROC_LOADAVG', _loadavg(tmp_path, 2))  # us + a busy neighbour
    T._decision = None
    assert T.forward_threads() == 2  # seen once: maybe a task running for a moment
    T._decision = None
    seen = _threads_seen(model)  # seen again: one thread
    assert len(seen) == 8 + 4 and set(seen) == {1}  # 8 blocks, 4 patch embeddings
    assert torch.get_num_threads() == 2  # given back
    # a quota of 1.0 CPU on an idle machine
    monkeypatch.setattr(T, 'PROC_LOADAVG', _loadavg(tmp_path, 1))
    monkeypatch.setattr(T, 'cgroup_cpu_limit', lambda: 1.0)
    T._decision, T._quota = None, None
    assert set(_threads_seen(model)) == {1}
    # the user's count wins: torch.set_num_threads, OMP_NUM_THREADS, switched off
    monkeypatch.setattr(T, 'PROC_LOADAVG', _loadavg(tmp_path, 3))
    T._decision = None
    for user in ('set', 'env', 'off', 'deterministic'):
        if user == 'set':
            torch.set_num_threads(1)
            assert T.explicit_threads() and T.forward_threads() is None
            torch.set_num_threads(2)
            continue
        with monkeypatch.context() as m:
            if user == 'env':
                m.setenv('OMP_NUM_THREADS', '2')
            elif user == 'off':
                T.set_adaptive_threads(False)
            else:  # results must not depend on the load
                m.setattr(torch, 'are_deterministic_algorithms_enabled', lambda: True)
            assert set(_threads_seen(model)) == {2}
        T.set_adaptive_threads(None)


def test_traced_forward_leaves_threads_alone(tmp_path: Path, two_threads,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T, 'PROC_LOADAVG', _loadavg(tmp_path, 3))
    model = PVTv2(arch='b0').eval()
    with torch.no_grad():
        torch.jit.trace(model, torch.randn(1, 3, 64, 64), check_trace=False)
    # while tracing nothing was decided (the decision would be a side effect of the graph)
    assert T._decision is None


@pytest.mark.skipif(not hasattr(os, 'sched_setaffinity') or len(os.sched_getaffinity(0)) < 2,
                    reason='needs an affinity mask of 2+ CPUs to restrict')
def test_affinity_mask_of_one_cpu_in_a_subprocess() -> None:
    """torch started with every CPU; then the mask shrinks to one (taskset -p, a scheduler):
    pvt_mm runs its blocks with one thread, torch's count stays as it was."""
    code = '''if True:
        import os, torch
        from pvt_mm.models.backbones import PVTv2
        from pvt_mm.models.fast import threads as T
        start = torch.get_num_threads()
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        T.PROC_LOADAVG = '/nonexistent'  # whatever the machine's load, only the mask counts
        model = PVTv2(arch='b0').eval()
        seen = []
        model.stages[0].blocks[0].attn.register_forward_hook(
            lambda *_: seen.append(torch.get_num_threads()))
        with torch.no_grad():
            model(torch.randn(1, 3, 64, 64))
        print(start, T.cpu_budget(), seen[0], torch.get_num_threads())  # the last line
    '''
    env = {k: v for k, v in os.environ.items() if k not in (*T.USER_ENV, T.ADAPT_ENV)}
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120, check=True).stdout.splitlines()
    out = out[-1].split()  # after the log line of the hooked attention
    start, budget, seen, after = map(int, out)
    assert start >= 2 and budget == 1 and seen == 1 and after == start
