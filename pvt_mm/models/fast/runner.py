"""The one decision between the reference layers and the CPU fast path.

A backbone forward asks :func:`decide_runner` once; the stages run their patch embeddings and
blocks through the :class:`Runner` it returns. On a oneDNN path (:mod:`.exec_path`) the runner
runs each stock part of a block through the fast kernels and every other part through its own
``forward`` (:mod:`.eligibility`), saying once per model which module steps aside and why. It
also picks the threads of each piece (:mod:`.threads`: for the calling thread only).
"""
from __future__ import annotations

import logging
import threading
import weakref

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from ..layers.shape import HW
from ..layers.tracing import is_graph_capture
from .attention import attention_forward
from .eligibility import BlockPlan, block_plan, global_hooks
from .exec_path import REFERENCE, TRACED, ExecKind, ExecPath, decide_exec_path
from .mlp import forward_native, mlp_forward, native_supported
from .threads import cpu_threads

# model -> (id of the module, reason) already logged; several threads may run one model
_reported: weakref.WeakKeyDictionary[nn.Module, set[tuple[int, str]]] = \
    weakref.WeakKeyDictionary()
_reported_lock = threading.Lock()


class Runner:
    """How one forward runs its patch embeddings and blocks (``path``: :mod:`.exec_path`).
    ``owner``: the model whose module names the log line uses (None: class names)."""

    __slots__ = ('path', 'owner')

    def __init__(self, path: ExecPath, owner: nn.Module | None = None) -> None:
        self.path, self.owner = path, owner

    def embed(self, embed: nn.Module, x: Tensor) -> tuple[Tensor, HW]:
        """``embed(x)`` with this forward's threads."""
        with cpu_threads(x):
            return embed(x)

    def block(self, block: nn.Module, x: Tensor, hw: HW) -> Tensor:
        """``block(x, hw)``: x (B, N, C) -> (B, N, C), its stock parts on the fast path."""
        with cpu_threads(x):
            if not self.path.fast:
                return block(x, hw)
            plan = block_plan(block)
            if plan.block is not None:
                self._report(block, plan.block)
                return block(x, hw)
            return self._fast_block(block, plan, x, hw)

    def _fast_block(self, block: nn.Module, plan: BlockPlan, x: Tensor, hw: HW) -> Tensor:
        path = self.path
        y = block.norm1(x)
        if plan.attn is None:
            y = attention_forward(block.attn, y, hw, path)
        else:
            self._report(block.attn, plan.attn)
            y = block.attn(y, hw)
        x = x + block.drop_path(y)
        if plan.mlp is not None:
            self._report(block.mlp, plan.mlp)
            return x + block.drop_path(block.mlp(block.norm2(x), hw))
        if plan.fused_mlp_half is None and path.kind is ExecKind.ONEDNN_INFER \
                and native_supported(block.mlp, path.dtype):
            return forward_native(block.mlp, x, path.dtype, block.norm2, residual=True)
        return x + block.drop_path(mlp_forward(block.mlp, block.norm2(x), hw, path))

    def _report(self, module: nn.Module, reason: str) -> None:
        """One log line per model and (module, reason): the module runs its own forward."""
        key = self.owner if self.owner is not None else module
        with _reported_lock:  # only taken when a module steps aside
            seen = _reported.setdefault(key, set())
            if (id(module), reason) in seen:
                return
            seen.add((id(module), reason))
        name = type(module).__name__
        if self.owner is not None:
            name = next((n for n, m in self.owner.named_modules() if m is module), '') or name
        print_log(f'pvt_mm: {name} runs its own forward, not the fast path ({reason})',
                  logger='current', level=logging.INFO)


def decide_runner(x: Tensor, weight_dtype: torch.dtype, fast_kernels: bool = True,
                  owner: nn.Module | None = None) -> Runner:
    """The runner of one forward of input ``x`` (any shape) through weights of
    ``weight_dtype``: traced graphs and ``fast_kernels=False`` run the reference layers; so
    does every forward while global module hooks are registered."""
    if is_graph_capture():
        return Runner(TRACED, owner)
    path = decide_exec_path(x, weight_dtype, fast_kernels)
    if path.fast:
        reason = global_hooks()
        if reason is not None:
            runner = Runner(REFERENCE, owner)
            if owner is not None:
                runner._report(owner, reason)
            return runner
    return Runner(path, owner)
