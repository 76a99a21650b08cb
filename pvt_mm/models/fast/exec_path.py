"""How a PVT forward runs: decided once per backbone call and passed down to every layer.

* ``REFERENCE``: plain PyTorch ops (``nn.Linear``, ``nn.Conv2d``, SDPA or explicit softmax):
  other devices and dtypes, builds without oneDNN, ``fast_kernels=False``, and every module
  that is not exactly the stock one (:mod:`.eligibility`).
* ``ONEDNN_INFER``: CPU without autograd: oneDNN kernels with bias and activation fused, the
  MLP over row bands, attention over query tiles (:mod:`.fused`, :mod:`.native`), in ``dtype``.
* ``ONEDNN_TRAIN``: CPU with autograd: oneDNN linears with their own backward, the banded
  MLP with a recomputing backward (:mod:`.mlp_grad`), in ``dtype``.
* ``TRACED``: ``torch.jit.trace`` / ONNX export / ``torch.compile`` / ``torch.export``: the
  reference ops, with every size taken from tensor shapes so the graph follows the input size.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import Tensor

from ..layers.tracing import is_graph_capture
from .fused import FUSED_AVAILABLE, FUSED_DTYPES, OneDNNKernels, fused_kernels_allowed


class ExecKind(enum.Enum):
    REFERENCE = 'reference'
    ONEDNN_INFER = 'onednn_infer'
    ONEDNN_TRAIN = 'onednn_train'
    TRACED = 'traced'


@dataclass(frozen=True)
class ExecPath:
    """One forward's execution path; ``dtype`` is the oneDNN kernels' dtype (None otherwise)."""

    kind: ExecKind
    dtype: torch.dtype | None = None

    @property
    def fast(self) -> bool:
        """True on the oneDNN paths (inference or training)."""
        return self.kind in (ExecKind.ONEDNN_INFER, ExecKind.ONEDNN_TRAIN)

    @property
    def traced(self) -> bool:
        return self.kind is ExecKind.TRACED

    @property
    def kernels(self) -> OneDNNKernels:
        """The oneDNN linear / conv of this path (only on the fast paths)."""
        if not self.fast:
            raise RuntimeError(f'{self.kind.value} path has no oneDNN kernels')
        return OneDNNKernels(self.dtype, autograd=self.kind is ExecKind.ONEDNN_TRAIN)


REFERENCE = ExecPath(ExecKind.REFERENCE)
TRACED = ExecPath(ExecKind.TRACED)


def decide_exec_path(x: Tensor, weight_dtype: torch.dtype, fast_kernels: bool = True
                     ) -> ExecPath:
    """The path for input ``x`` (any shape) through weights of ``weight_dtype``, from the
    device, the dtype (autocast's, else x's), grad mode and the tracing / export state."""
    if is_graph_capture():
        return TRACED
    if not (fast_kernels and fused_kernels_allowed() and FUSED_AVAILABLE) \
            or x.device.type != 'cpu' or weight_dtype not in FUSED_DTYPES:
        return REFERENCE
    dtype = torch.get_autocast_dtype('cpu') if torch.is_autocast_enabled('cpu') else x.dtype
    if dtype not in FUSED_DTYPES:
        return REFERENCE
    kind = ExecKind.ONEDNN_TRAIN if torch.is_grad_enabled() else ExecKind.ONEDNN_INFER
    return ExecPath(kind, dtype)
