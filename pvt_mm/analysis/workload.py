"""What a benchmark compares and runs: :class:`Candidate` (a model described so that any
process can build it) and :class:`Workload` (a built model and one step of it).

Shared by :mod:`.benchmark` (the harness) and :mod:`.deploy_bench` (the deployment runtimes), so
neither imports the other's internals.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

INFERENCE_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
SEED = 0


@dataclass(frozen=True)
class Candidate:
    """One model to measure, described so that any process can build it (JSON-able).

    ``role``: 'ours', 'peer' (mmdet / timm) or 'ref' (our own other variant, where mmdet has
    no peer). ``modes``: the modes it is measured in (None: all).
    """

    label: str
    impl: str
    role: str
    subject: str  # what is compared: an arch name or a config name
    arch: str | None = None
    config: str | None = None
    cfg_options: dict | None = None
    with_cp: bool = False
    modes: tuple[str, ...] | None = None

    def runs_in(self, mode: str) -> bool:
        return self.modes is None or mode in self.modes


@dataclass
class Workload:
    """A built model and one step of it. ``step()`` returns the loss for training steps.
    ``features()`` gives the backbone's stage maps (for the bf16 comparison); where the
    precision is fixed when the workload is built (the deployment runtimes), ``features()``
    are in that precision and ``fp32_features()`` the fp32 PyTorch reference. ``around()``:
    a context every timed step runs in, outside the timing (the contention case's neighbour)."""

    model: nn.Module
    step: Callable[[], float | None]
    features: Callable[[], tuple[Tensor, ...]]
    fp32_features: Callable[[], tuple[Tensor, ...]] | None = None
    precision_note: str | None = None
    around: Callable[[], AbstractContextManager] | None = None
