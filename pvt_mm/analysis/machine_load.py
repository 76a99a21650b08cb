"""Is the machine idle while we measure? And a busy neighbour to measure under contention.

Timings taken while other processes run are not the library's speed (on a 2-core host one busy
neighbour made a 2-thread forward 3x slower), so every benchmark records the load before, during
and after its run (:class:`LoadMonitor`) and says when the machine was not idle. The 1-minute
load average includes this process's own threads once it runs, so "during" is judged from the
runnable tasks of *other* processes, sampled a few times a second: ``/proc/loadavg``'s
machine-wide count less the running threads of this process and of its child processes (the
benchmark's memory workers and its own neighbour).

:class:`BusyNeighbour` is one other process spinning on a CPU (as another job on a shared
server), started and stopped by the benchmark: paused (SIGSTOP) except while a loaded step
runs, killed when the benchmark ends, and gone by itself when its parent dies or its time bound
passes.
"""
from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from ..models.fast.threads import own_running_threads, runnable_tasks

IDLE_LOADAVG = 0.5  # 1-minute load average below which the machine counts as idle at the start
BUSY_SHARE = 0.1  # more samples than this with another runnable task: not idle during the run
SAMPLE_S = 0.25
NEIGHBOUR_MAX_S = 1800.  # a neighbour process exits by itself after this long
_SPIN = '''
import ctypes, os, sys, time
parent, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
try:
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG = SIGKILL: die with the benchmark
except Exception:
    pass
n = 0
while True:
    n += 1
    if n % 500000 == 0 and (os.getppid() != parent or time.monotonic() > end):
        break
'''


def _state(pid: int | str) -> bytes:
    """The state letter of process (or ``PID/task/TID``) ``pid``; b'' when it is gone."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as f:
            stat = f.read()
    except OSError:
        return b''
    end = stat.rfind(b')')
    return stat[end + 2:end + 3]


def _running(pid: int | str) -> bool:
    """Whether process (or ``PID/task/TID``) ``pid`` is in state R (running or runnable)."""
    return _state(pid) == b'R'


def _descendants(pid: int) -> set[int]:
    """Processes descended from ``pid`` (one scan of ``/proc/*/stat`` for parent pids)."""
    parents: dict[int, int] = {}
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open(f'/proc/{name}/stat', 'rb') as f:
                stat = f.read()
        except OSError:
            continue
        parents[int(name)] = int(stat[stat.rfind(b')') + 2:].split()[1])
    family, grew = {pid}, True
    while grew:
        new = {p for p, pp in parents.items() if pp in family and p not in family}
        family |= new
        grew = bool(new)
    return family - {pid}


def _running_threads(pid: int) -> int:
    """Threads of process ``pid`` in state R (0 when it is gone)."""
    n = 0
    try:
        tids = os.listdir(f'/proc/{pid}/task')
    except OSError:
        return 0
    for tid in tids:
        n += _running(f'{pid}/task/{tid}')
    return n


def others_runnable(exclude: tuple[int, ...] = ()) -> int | None:
    """Runnable tasks of other processes right now: not this process's threads, nor those of
    its child processes (the benchmark's memory workers and neighbour), nor ``exclude``'s
    (None where /proc cannot tell)."""
    own = own_running_threads()  # before the total: our idle workers only fall asleep
    total = runnable_tasks()
    if total is None:
        return None
    others = total - own
    if others <= 0:
        return 0
    family = _descendants(os.getpid()) | set(exclude)  # scanned only when someone runs
    return max(0, others - sum(_running_threads(p) for p in family))


@dataclass
class LoadReport:
    """Load before, during and after a run. ``others``: samples of other processes'
    runnable tasks during the run."""

    loadavg_start: tuple[float, float, float]
    others_start: int | None
    loadavg_end: tuple[float, float, float] | None = None
    others_end: int | None = None
    others: list[int] = field(default_factory=list)

    @property
    def busy_share(self) -> float | None:
        """Share of the samples during the run with another process runnable."""
        return sum(o > 0 for o in self.others) / len(self.others) if self.others else None

    @property
    def idle(self) -> bool:
        """Idle at the start (1-min load < IDLE_LOADAVG, nobody else runnable) and during the
        run (another process runnable in at most BUSY_SHARE of the samples)."""
        start = self.loadavg_start[0] < IDLE_LOADAVG and not self.others_start
        share = self.busy_share
        return start and (share is None or share <= BUSY_SHARE)

    def lines(self) -> dict[str, str]:
        """Report entries (name -> text), for the printed output and the Markdown report."""
        fmt = ' / '.join
        out = {'load before the run (1/5/15-min load average; other runnable tasks)':
               f'{fmt(f"{v:.2f}" for v in self.loadavg_start)}; {_n(self.others_start)}'}
        if self.others:
            out['load during the run (other processes runnable)'] = (
                f'in {100 * self.busy_share:.0f}% of {len(self.others)} samples, '
                f'{statistics.mean(self.others):.2f} tasks on average, at most '
                f'{max(self.others)}')
        if self.loadavg_end is not None:
            out['load after the run (load average includes this run; other runnable tasks)'] = (
                f'{fmt(f"{v:.2f}" for v in self.loadavg_end)}; {_n(self.others_end)}')
        out['machine idle'] = 'yes' if self.idle else (
            'NO: other processes ran; these timings are not the idle speed (re-run on a quiet '
            f'machine: 1-min load < {IDLE_LOADAVG} and nothing else runnable)')
        return out

    def warning(self) -> str | None:
        return None if self.idle else ('WARNING: the machine was not idle during this '
                                       'benchmark: ' + self.lines()['machine idle'][4:])


def _n(v: int | None) -> str:
    return '?' if v is None else str(v)


class LoadMonitor:
    """Samples other processes' runnable tasks every ``SAMPLE_S`` in a thread while the body
    runs; ``report`` holds the result. ``exclude``: more pids not to count (beside this
    process and its children); ``loadavg_start``: the load average taken before the caller's
    own start-up work (imports, model builds) raised it."""

    def __init__(self, exclude: tuple[int, ...] = (),
                 loadavg_start: tuple[float, float, float] | None = None) -> None:
        self.exclude = exclude
        self.report = LoadReport(loadavg_start or os.getloadavg(), others_runnable(exclude))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            n = others_runnable(self.exclude)
            if n is not None:
                self.report.others.append(n)

    def __enter__(self) -> LoadMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.report.others_end = others_runnable(self.exclude)
        self.report.loadavg_end = os.getloadavg()


class BusyNeighbour:
    """One other process spinning on a CPU, paused until :meth:`busy` is entered.

    Use as a context manager (killed on exit, also on Ctrl-C); ``max_s`` bounds its life."""

    def __init__(self, max_s: float = NEIGHBOUR_MAX_S, settle_s: float = 0.05) -> None:
        self.settle_s = settle_s
        self.proc = subprocess.Popen([sys.executable, '-S', '-c', _SPIN, str(os.getpid()),
                                      str(max_s)])
        self.pid = self.proc.pid
        self.pause()

    def pause(self) -> None:
        """SIGSTOP, and wait (up to 1 s) until the process is stopped: the signal is
        asynchronous, and the next idle run must not start beside it."""
        if not self.alive():
            return
        os.kill(self.pid, signal.SIGSTOP)
        end = time.monotonic() + 1.
        while time.monotonic() < end and _state(self.pid) not in (b'T', b't', b'', b'Z'):
            time.sleep(0.001)

    def busy(self) -> _Busy:
        """Context: the neighbour spins inside (after ``settle_s``, so it is running when the
        body starts), and is paused again after."""
        return _Busy(self)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> BusyNeighbour:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Busy:
    def __init__(self, neighbour: BusyNeighbour) -> None:
        self.n = neighbour

    def __enter__(self) -> None:
        if not self.n.alive():
            raise RuntimeError('the busy neighbour process is gone (its time bound passed?); '
                               'the loaded timings would be idle ones')
        os.kill(self.n.pid, signal.SIGCONT)
        time.sleep(self.n.settle_s)

    def __exit__(self, *exc: object) -> None:
        self.n.pause()
