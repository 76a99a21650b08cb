"""The loaded case of the benchmark: every candidate timed again while one busy neighbour
process spins (:class:`.machine_load.BusyNeighbour`), in the same alternation as the idle runs.

A loaded twin of a candidate carries ``LOADED`` in its label and subject, so the report compares
the loaded models with each other (ours against the runtimes under the same load), and
:func:`contention_lines` gives each model's loaded / idle time.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from .machine_load import BusyNeighbour
from .workload import Candidate, Workload

LOADED = '[1 busy neighbour]'


class Result(Protocol):
    """What is read of :class:`.benchmark.Result` here (declared so as not to import it)."""

    label: str
    mode: str
    shape: tuple[int, int]
    batch_size: int
    times: list[float]


def loaded(c: Candidate) -> Candidate:
    """The loaded twin of ``c``."""
    return replace(c, label=f'{c.label} {LOADED}', subject=f'{c.subject} {LOADED}')


def is_loaded(r: Result | Candidate) -> bool:
    return r.label.endswith(LOADED)


def loaded_workload(w: Workload, neighbour: BusyNeighbour) -> Workload:
    """``w`` whose timed steps run while ``neighbour`` spins (paused again after each)."""
    return replace(w, around=neighbour.busy)


def contention_lines(results: Sequence[Result]) -> list[str]:
    """'fp32 512x512 batch 1: pvt_mm b2: idle 600 ms, with 1 busy neighbour 1150 ms (1.92x)'
    per loaded result with an idle twin."""
    out = []
    for r in results:
        if not is_loaded(r):
            continue
        label = r.label[:-len(LOADED) - 1]
        idle = next((x for x in results if x.label == label and x.mode == r.mode
                     and x.shape == r.shape and x.batch_size == r.batch_size), None)
        if idle is None:
            continue
        t_idle, t_busy = (1e3 * statistics.median(x.times) for x in (idle, r))
        out.append(f'{r.mode} {r.shape[0]}x{r.shape[1]} batch {r.batch_size}: {label}: idle '
                   f'{t_idle:.1f} ms, with 1 busy neighbour {t_busy:.1f} ms '
                   f'({t_busy / t_idle:.2f}x)')
    return out
