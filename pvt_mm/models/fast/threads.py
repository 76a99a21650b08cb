"""How many CPU threads a PVT forward uses: what the process may use, less what others keep busy.

torch starts with one thread per CPU of the affinity mask (OpenMP's default) and ignores a
container's CPU quota; with more threads than free cores, every OpenMP barrier of a kernel waits
for a thread the scheduler has set aside (a 2-thread PVTv2-b2 forward ran 2.9x slower with one
busy neighbour process on 2 cores; docs/benchmarks.md, "Shared machines"). So, unless the
count is the user's (see :func:`explicit_threads`), each block and patch embedding of a CPU
forward runs with

    min(torch's count, CPUs of the affinity mask, ceil(cgroup CPU quota), free CPUs)

threads (at least one), set for the calling thread only (its OpenMP thread count, see
:func:`cpu_threads`: other Python threads and ``torch.get_num_threads()`` elsewhere never see
it) and put back afterwards. "Free CPUs" = online CPUs minus
the runnable tasks of other processes at that moment (``/proc/loadavg``'s 4th field, less this
process's own running threads), seen in two decisions in a row (a task that runs for a moment
does not count); it is used only when the affinity mask holds every online CPU (the count is
machine-wide). The decision is re-read at most every ``DECISION_TTL_S``.
"""
from __future__ import annotations

import ctypes
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..layers.tracing import is_graph_capture

PROC_LOADAVG = Path('/proc/loadavg')
PROC_SELF_TASKS = Path('/proc/self/task')
PROC_SELF_CGROUP = Path('/proc/self/cgroup')
CGROUP_ROOT = Path('/sys/fs/cgroup')
USER_ENV = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')  # the user chose the count
ADAPT_ENV = 'PVT_MM_ADAPTIVE_THREADS'  # '0': never change torch's count
DECISION_TTL_S = 0.02  # a decision is reused this long (one costs ~30 us)
QUOTA_TTL_S = 5.  # the cgroup files are re-read this often

_STARTUP_THREADS = torch.get_num_threads()  # torch's count when pvt_mm was imported
_adaptive: bool | None = None  # set_adaptive_threads(); None: from the environment
_decision: tuple[float, int] | None = None  # (monotonic time, threads)
_others_before: int | None = 0  # other processes' runnable tasks at the previous decision
_quota: tuple[float, float | None] | None = None


def set_adaptive_threads(enabled: bool | None) -> None:
    """True / False: allow / forbid pvt_mm to change torch's thread count; None: back to the
    default (allowed unless ``PVT_MM_ADAPTIVE_THREADS=0``)."""
    global _adaptive, _decision, _others_before
    _adaptive, _decision, _others_before = enabled, None, 0


def explicit_threads() -> bool:
    """True when the thread count is the user's, and pvt_mm leaves it as it is: adaptation
    switched off (:func:`set_adaptive_threads`, ``PVT_MM_ADAPTIVE_THREADS=0``),
    ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set, or ``torch.get_num_threads()`` different
    from the count torch had when pvt_mm was imported (a ``torch.set_num_threads(n)`` call,
    or an outer pvt_mm forward that already chose). ``torch.set_num_threads`` with the very
    count torch started with cannot be told from the default: switch adaptation off for that.
    Also True under ``torch.use_deterministic_algorithms(True)`` (mmengine's
    ``randomness=dict(deterministic=True)``): a reduction split over another number of threads
    rounds differently, so a count that follows the machine's load would make results depend
    on it."""
    adaptive = _adaptive if _adaptive is not None else os.environ.get(ADAPT_ENV, '1') != '0'
    return (not adaptive or any(os.environ.get(v) for v in USER_ENV)
            or torch.get_num_threads() != _STARTUP_THREADS
            or torch.are_deterministic_algorithms_enabled())


def affinity_cpus() -> set[int]:
    """CPUs this process may run on (``os.sched_getaffinity``; all online CPUs elsewhere)."""
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def online_cpus() -> int:
    """CPUs online on the machine."""
    return os.cpu_count() or len(affinity_cpus())


def cgroup_cpu_limit(root: Path | None = None, proc_cgroup: Path | None = None
                     ) -> float | None:
    """CPUs' worth of time the process's cgroup may use (quota / period), the smallest over
    the cgroup and its ancestors; None without a quota. cgroup v2: ``cpu.max`` ("max 100000"
    or "150000 100000"); v1: ``cpu.cfs_quota_us`` (-1: none) / ``cpu.cfs_period_us`` under
    the ``cpu`` controller's mount. ``root`` / ``proc_cgroup``: the cgroup mount and the
    process's cgroup file (default: :data:`CGROUP_ROOT`, :data:`PROC_SELF_CGROUP`)."""
    root = CGROUP_ROOT if root is None else root
    proc_cgroup = PROC_SELF_CGROUP if proc_cgroup is None else proc_cgroup
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    limits = []
    for line in lines:
        _, controllers, path = line.split(':', 2)
        if controllers == '':  # v2 unified hierarchy
            for d in _dirs_up(root, path):
                limits.append(_v2_limit(d / 'cpu.max'))
        elif 'cpu' in controllers.split(','):
            for mount in (root / controllers, root / 'cpu', root / 'cpu,cpuacct'):
                if mount.is_dir():
                    limits += [_v1_limit(d) for d in _dirs_up(mount, path)]
                    break
    limits = [v for v in limits if v is not None]
    return min(limits) if limits else None


def _dirs_up(mount: Path, path: str) -> list[Path]:
    """``mount/path`` and its ancestors up to ``mount`` (the ones that exist). Inside a
    cgroup namespace the process's path may not exist under the mount: then the mount."""
    parts = [p for p in path.strip('/').split('/') if p]
    dirs = [mount.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return [d for d in dirs if d.is_dir()] or [mount]


def _v2_limit(f: Path) -> float | None:
    try:
        quota, period = f.read_text().split()[:2]
        return None if quota == 'max' else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_limit(d: Path) -> float | None:
    try:
        quota = int((d / 'cpu.cfs_quota_us').read_text())
        period = int((d / 'cpu.cfs_period_us').read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cpu_budget() -> int:
    """CPUs the process may use: the affinity mask, capped by ceil(cgroup quota) (>= 1)."""
    global _quota
    now = time.monotonic()
    if _quota is None or now - _quota[0] > QUOTA_TTL_S:
        _quota = (now, cgroup_cpu_limit())
    n = len(affinity_cpus())
    if _quota[1] is not None:
        n = min(n, math.ceil(_quota[1]))
    return max(1, n)


def runnable_tasks(loadavg: Path | None = None) -> int | None:
    """Tasks runnable on the machine right now (``/proc/loadavg``'s 4th field, "R/total")."""
    try:
        with open(PROC_LOADAVG if loadavg is None else loadavg, 'rb') as f:
            return int(f.read().split()[3].split(b'/')[0])
    except (OSError, ValueError, IndexError):
        return None


def own_running_threads(tasks: Path | None = None) -> int:
    """Threads of this process in state R (running or runnable), at least this one."""
    n = 0
    tasks = PROC_SELF_TASKS if tasks is None else tasks
    try:
        names = os.listdir(tasks)
    except OSError:
        return 1
    for tid in names:
        try:
            with open(f'{tasks}/{tid}/stat', 'rb') as f:
                stat = f.read()
        except OSError:
            continue
        end = stat.rfind(b')')
        n += stat[end + 2:end + 3] == b'R'
    return max(1, n)


def others_runnable(at_most: int | None = None) -> int | None:
    """Runnable tasks of other processes now (None where /proc cannot tell). With
    ``at_most``: when the machine-wide count leaves no more than that for others, it is
    bounded without reading this process's threads (the costlier half): total - 1."""
    total = runnable_tasks()
    if total is None:
        return None
    if at_most is not None and total - 1 <= at_most:
        return max(0, total - 1)
    own = own_running_threads()
    # counted again after ours: meanwhile our idle workers can only fall asleep, so a worker
    # that stopped spinning between the two reads is not taken for someone else
    total = runnable_tasks()
    return None if total is None else max(0, total - own)


def choose_threads(current: int, budget: int, online: int, others: int | None,
                   whole_machine: bool) -> int:
    """The rule of the module doc: ``current`` (torch's count) capped by ``budget`` and, when
    the process may use the ``whole_machine``, by the ``online`` CPUs other processes leave
    free; at least 1."""
    n = min(current, budget)
    if whole_machine and others is not None:
        n = min(n, online - others)
    return max(1, n)


def forward_threads() -> int | None:
    """Threads for the next piece of a CPU forward, or None to leave the count alone (the
    user's count, see :func:`explicit_threads`)."""
    global _decision, _others_before
    if explicit_threads():
        return None
    now = time.monotonic()
    decision = _decision
    if decision is not None and now - decision[0] < DECISION_TTL_S:
        return decision[1]
    allowed, online = affinity_cpus(), online_cpus()
    current, budget = torch.get_num_threads(), cpu_budget()
    whole = len(allowed) >= online
    # others <= online - min(current, budget) change nothing: no need to count our threads
    others = others_runnable(online - min(current, budget)) if whole else None
    # a task must be seen twice running (~20+ ms apart) to count: a spinning neighbour
    # is, a kernel worker or a shell waking up for a moment mostly is not
    seen = others
    if others is not None and _others_before is not None:
        seen = min(others, _others_before)
    _others_before = others
    n = choose_threads(current, budget, online, seen, whole_machine=whole)
    _decision = (now, n)
    return n


_UNFOUND = object()
_omp_lib: object = _UNFOUND


def openmp_runtime() -> ctypes.CDLL | None:
    """torch's OpenMP runtime (the one mapped into this process), whose
    ``omp_set_num_threads`` sets the calling thread's count only; None when torch does not
    run on OpenMP or the runtime cannot be told apart (then the count is left alone)."""
    global _omp_lib
    if _omp_lib is _UNFOUND:
        _omp_lib = _find_openmp()
    return _omp_lib  # type: ignore[return-value]


def _find_openmp() -> ctypes.CDLL | None:
    if 'OpenMP' not in torch.__config__.parallel_info().split('parallel backend:')[-1]:
        return None
    try:
        with open('/proc/self/maps') as f:
            mapped = {line.split()[-1] for line in f if '/lib' in line and 'omp' in line}
    except OSError:
        return None
    runtimes = sorted(p for p in mapped if os.path.basename(p).startswith(
        ('libgomp', 'libiomp5', 'libomp')))
    if len(runtimes) != 1:  # none, or two runtimes: which one torch uses is unknown
        return None
    try:
        lib = ctypes.CDLL(runtimes[0])
        lib.omp_set_num_threads.argtypes = [ctypes.c_int]
        lib.omp_get_max_threads.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return lib


@contextmanager
def cpu_threads(x: torch.Tensor) -> Iterator[int]:
    """Run the body with :func:`forward_threads` threads when ``x`` is on the CPU and the
    forward is not traced / exported / compiled. The count is the calling thread's own OpenMP
    setting (what torch's CPU kernels and oneDNN read), put back afterwards: torch's process
    count (``torch.set_num_threads``) and other threads are never touched. Yields the count."""
    n = None if x.device.type != 'cpu' or is_graph_capture() else forward_threads()
    prev = torch.get_num_threads()  # also sets up this thread's count in torch
    omp = openmp_runtime() if n is not None and n != prev else None
    if omp is None:
        yield prev
        return
    omp.omp_set_num_threads(n)
    try:
        yield n
    finally:
        omp.omp_set_num_threads(prev)
