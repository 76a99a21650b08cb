"""The CPU speed machinery of the PVT layers, apart from the model it speeds up.

One decision per forward (:func:`decide_runner`) picks the execution path (:mod:`.exec_path`);
the :class:`Runner` runs each block's stock parts through the fused oneDNN kernels
(:mod:`.fused`), the row-banded MLP (:mod:`.bands`, :mod:`.mlp_grad`), the native tile kernels
(:mod:`.native`, ``csrc/``) and every other part through its own ``forward``
(:mod:`.eligibility`), with the threads of :mod:`.threads`. The layers in
:mod:`pvt_mm.models.layers` never import this package.
"""
from .exec_path import REFERENCE, TRACED, ExecKind, ExecPath, decide_exec_path
from .runner import Runner, decide_runner

__all__ = ['Runner', 'decide_runner', 'ExecKind', 'ExecPath', 'REFERENCE', 'TRACED',
           'decide_exec_path']
