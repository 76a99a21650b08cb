"""Several Python threads running one model (and two models) at once, in fresh processes: the
same outputs as one thread, no exception at first use (the native kernels load once, whole),
and the process's thread count is what it was, in every thread, during and after."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKERS = r'''if True:
    import threading, torch
    torch.set_num_threads(2)
    from pvt_mm.models.backbones import PVT, PVTv2
    from pvt_mm.models.fast import threads as T
    if FORCE_ONE:  # as under a busy neighbour: every piece of a forward picks 1 thread
        T.forward_threads = lambda: 1
    torch.manual_seed(0)
    models = [PVT(arch='tiny').eval(), PVTv2(arch='b0').eval()]
    xs = [torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 64)]
    n, rounds = 4, 3
    barrier = threading.Barrier(n + 1)
    results, errors, seen = {}, [], set()
    stop = threading.Event()

    def work(i):
        try:
            barrier.wait()
            for r in range(rounds):  # the first forward of the process runs here
                with torch.no_grad():
                    results[i, r] = models[i % 2](xs[i % 2])
        except BaseException as err:
            errors.append(repr(err))

    def observe():  # what other threads see of torch's count while forwards run
        barrier.wait()
        while not stop.is_set():
            t = threading.Thread(target=lambda: seen.add(torch.get_num_threads()))
            t.start(); t.join()
            seen.add(torch.get_num_threads())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    observer = threading.Thread(target=observe)
    for t in threads + [observer]:
        t.start()
    for t in threads:
        t.join()
    stop.set(); observer.join()
    assert not errors, errors
    with torch.no_grad():
        alone = [m(x) for m, x in zip(models, xs)]
    for (i, r), outs in results.items():
        for a, b in zip(outs, alone[i % 2]):
            assert torch.equal(a, b), (i, r, (a - b).abs().max().item())
    assert seen == {2}, seen
    assert torch.get_num_threads() == 2
    print('ok', len(results))
'''


def _run(force_one: bool) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'PVT_MM_ADAPTIVE_THREADS')}
    code = WORKERS.replace('FORCE_ONE', repr(force_one))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_threads_share_one_model_with_identical_outputs():
    assert _run(force_one=False).split() == ['ok', '12']


def test_thread_count_changes_stay_in_the_calling_thread():
    """Every forward piece runs with 1 thread (a busy neighbour's case), yet no other thread,
    nor a thread started meanwhile, nor the process afterwards sees anything but 2."""
    assert _run(force_one=True).split() == ['ok', '12']
