"""Subprocess entry of :func:`pvt_mm.analysis.benchmark.measure_memory` (not for direct use).

    python -m pvt_mm.analysis._memory_worker --_memory-worker '<json spec>'

Builds one candidate, runs its steps and prints ``{"peak_mib": ...}`` as the last stdout line.
CPU: growth of the peak resident set (``VmHWM``; not ``ru_maxrss``, which on Linux keeps the
parent's resident size at fork across the exec) over the resident set before the model is
built (after every import a candidate may need and a tiny op that starts the thread pool; the
peak is reset there through ``/proc/self/clear_refs``), less the growth of file-backed resident
pages (shared-library code that the first run pages in: tens of MiB, alike for every model).
CUDA: ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import argparse
import json

import torch

from ..engine.runtime import config_scope, read_model_config
from .benchmark import MIB, Candidate, build_workload

KIB = 1024  # unit of /proc/self/status sizes


def memory_status() -> dict[str, int]:
    """VmHWM (peak resident), VmRSS, RssFile and RssShmem of this process, in bytes."""
    out = {}
    with open('/proc/self/status') as f:
        for line in f:
            key, _, value = line.partition(':')
            if key in ('VmHWM', 'VmRSS', 'RssFile', 'RssShmem'):
                out[key] = int(value.split()[0]) * KIB
    return out


def reset_peak_rss() -> None:
    """Set VmHWM to the current resident size (Linux >= 4.0); harmless where refused."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass


def file_backed(status: dict[str, int]) -> int:
    return status['RssFile'] + status['RssShmem']


def warm_up_runtime(candidate: dict) -> None:
    """Import what the candidate needs and start the thread pool, so that neither counts."""
    import importlib
    if candidate['config'] is not None:
        importlib.import_module(f'{config_scope(read_model_config(candidate["config"]))}.models')
    if candidate['impl'] == 'mmdet':
        importlib.import_module('mmdet.models')
    if candidate['impl'] == 'timm':
        importlib.import_module('timm.models')
    with torch.no_grad():
        x = torch.ones(1, 8, 8, 8)
        torch.nn.functional.conv2d(x, torch.ones(8, 8, 1, 1)).flatten(1) @ torch.ones(512, 8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--_memory-worker', dest='spec', required=True, help='JSON spec')
    spec = json.loads(p.parse_args().spec)
    cand = spec['candidate']
    cand['modes'] = tuple(cand['modes']) if cand['modes'] is not None else None
    device = spec['device']
    if spec['threads']:  # None: torch's default
        torch.set_num_threads(spec['threads'])
    warm_up_runtime(cand)
    reset_peak_rss()
    start = memory_status()
    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    work = build_workload(Candidate(**cand), spec['mode'], spec['shape'], spec['batch_size'],
                          device)
    for i in range(spec['steps']):
        torch.manual_seed(i)
        work.step()
    if device.startswith('cuda'):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        end = memory_status()
        peak = end['VmHWM'] - start['VmRSS'] - (file_backed(end) - file_backed(start))
    print(json.dumps(dict(peak_mib=peak / MIB)))


if __name__ == '__main__':
    main()
