"""Hostile checkpoints for the loading tests, and quick --cfg-options for tiny demo runs.

Two payloads, each of which creates a marker file when unpickled without protection:

- :func:`plain_payload`: a ``__reduce__`` to ``builtins.exec`` (refused by any safe loader);
- :func:`hide_gadget`: a real checkpoint with one tensor replaced by the
  ``getattr(getattr, '__self__')`` -> ``builtins`` -> ``eval`` gadget, called through the
  default-allowed ``torch._tensor._rebuild_from_type_v2``. It returns a tensor of the
  replaced one's shape, so a loader that lets ``builtins.getattr`` through loads the file
  normally after running the code.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pvt_mm.checkpoint import read_checkpoint


class _Exec:
    """Pickles as ``exec(code)``: a plain code-running ``__reduce__``."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


class _GetAttr:
    """Pickles as ``getattr(obj, name)``."""

    def __init__(self, obj: Any, name: str) -> None:
        self.obj, self.name = obj, name

    def __reduce__(self):
        return (getattr, (self.obj, self.name))


class _Gadget:
    """Pickles as ``_rebuild_from_type_v2(eval, Tensor, (code,), None)`` with ``eval`` reached
    as ``getattr(getattr(getattr, '__self__'), 'eval')`` (no GLOBAL other than getattr)."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        evaluate = _GetAttr(_GetAttr(getattr, '__self__'), 'eval')
        return (torch._tensor._rebuild_from_type_v2, (evaluate, torch.Tensor, (self.code,), None))


def _touch(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def plain_payload(path: Path, marker: Path) -> Path:
    """A torch zip checkpoint whose state dict holds an ``exec`` ``__reduce__``."""
    torch.save({'meta': {}, 'state_dict': {'backbone.x': _Exec(_touch(marker))}}, path)
    return path


def hide_gadget(real: Path, path: Path, marker: Path) -> Path:
    """``real`` (a checkpoint written by the tools) re-saved with its first backbone tensor
    replaced by the gadget (which rebuilds a zero tensor of the same shape)."""
    checkpoint = read_checkpoint(real)
    sd = checkpoint['state_dict'] if 'state_dict' in checkpoint else checkpoint
    key = next(k for k in sd if k.startswith('backbone.'))
    shape = tuple(sd[key].shape)
    sd[key] = _Gadget(f"{_touch(marker)} or __import__('torch').zeros({shape})")
    torch.save(checkpoint, path)
    return path


def run_options(**extra: Any) -> list[str]:
    """--cfg-options for 1-iteration demo runs: batch 4 on 4 images, no validation, loaders
    in this process, a unique experiment name (a logger per runner)."""
    opts: dict[str, Any] = {
        'experiment_name': f'sec_{uuid.uuid4().hex[:8]}', 'train_dataloader.batch_size': 4,
        'default_hooks.logger.interval': 1, 'train_cfg.max_epochs': 1,
        'val_cfg': None, 'val_dataloader': None, 'val_evaluator': None}
    for loader in ('train_dataloader', 'test_dataloader'):
        opts.update({f'{loader}.num_workers': 0, f'{loader}.persistent_workers': False})
    opts.update(extra)
    return ['--cfg-options'] + [f'{k}={v}' for k, v in opts.items()]


def state_dict_of(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    return checkpoint['state_dict'] if 'state_dict' in checkpoint else checkpoint
