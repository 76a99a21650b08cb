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
    from pvt_mm.checkpoint import read_checkpoint
    checkpoint = read_checkpoint(real)
    sd = checkpoint['state_dict'] if 'state_dict' in checkpoint else checkpoint
    key = next(k for k in sd if k.startswith('backbone.'))
    shape = tuple(sd[key].shape)
    sd[key] = _Gadget(f"{_touch(marker)} or __import__('torch').zeros({shape})")
    torch.save(checkpoint, path)
    return path


def OLD_ALLOW_LIST() -> list:  # noqa: N802  (a constant, built lazily)
    """The allow-list pvt_mm used before the stand-ins (sessions 4-5), i.e. the protection
    removed: the real ``HistoryBuffer``, numpy's reconstruct / scalar / ndarray / dtype and
    dtype classes, and the real ``getattr``."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    multiarray = (getattr(np, '_core', None) or np.core).multiarray
    dtype_classes = [type(np.dtype(t)) for t in ('f8', 'f4', 'i8', 'i4', 'b1')]
    return [HistoryBuffer, getattr, multiarray._reconstruct, multiarray.scalar, np.ndarray,
            np.dtype, *dtype_classes]


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


# ---- round 2 (issue 17): files made only of allow-listed names -------------------------------
class _Reduce:
    """Pickles as ``fn(*args)`` (then a BUILD with ``state`` when given)."""

    def __init__(self, fn: Any, args: tuple, state: Any = None) -> None:
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def forged_object_array(pointer: int, wrap_in_set: bool = True) -> _Reduce:
    """numpy's dtype / ndarray and ``set`` only: an object dtype made without a BUILD, a
    float64 dtype copy BUILT with a state that gives it that object dtype as a sub-array
    while it claims to hold no objects, and an array of it over 8 file bytes, which numpy
    then reads as a ``PyObject*`` (``pointer``); ``set()`` of it dereferences it."""
    import numpy as np
    objects = _Reduce(np.dtype, ('O8', False, True))
    forged = _Reduce(np.dtype, ('f8', False, True),
                     (3, '|', (objects, (1,)), None, None, 8, 1, 0))
    array = _Reduce(np.ndarray, ((), forged, pointer.to_bytes(8, 'little')))
    return _Reduce(set, (array,)) if wrap_in_set else array


class _HistoryBufferRecord(_Reduce):
    """Pickled as a ``HistoryBuffer`` (pickle checks ``__newobj__``'s class)."""

    @property
    def __class__(self):  # noqa: D105
        from mmengine.logging.history_buffer import HistoryBuffer
        return HistoryBuffer


def history_buffer(state: Any) -> _Reduce:
    """A ``HistoryBuffer`` record (NEWOBJ + BUILD) with the given state."""
    import copyreg

    from mmengine.logging.history_buffer import HistoryBuffer
    return _HistoryBufferRecord(copyreg.__newobj__, (HistoryBuffer,), state)


def history_buffer_method(*args: Any) -> _Reduce:
    """``getattr(*args)``, e.g. ``(HistoryBuffer, 'max')`` or a three-argument call."""
    return _Reduce(getattr, args)


def plant(real: Path, path: Path, **meta: Any) -> Path:
    """``real`` (a checkpoint written by the tools) re-saved with ``meta`` entries added."""
    from pvt_mm.checkpoint import read_checkpoint
    checkpoint = read_checkpoint(real)
    checkpoint['meta'].update(meta)
    torch.save(checkpoint, path)
    return path


def flip_inside_a_tensor_record(src: Path, dst: Path) -> str:
    """``src`` copied to ``dst`` with one bit flipped in the middle of its largest tensor
    record (the zip's CRC-32 for that record no longer matches); returns the record."""
    import shutil
    import zipfile
    shutil.copy(src, dst)
    with zipfile.ZipFile(dst) as archive:
        info = max((i for i in archive.infolist() if '/data/' in i.filename),
                   key=lambda i: i.file_size)
    with open(dst, 'r+b') as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), 'little') for _ in range(2))
        where = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(where)
        byte = f.read(1)[0]
        f.seek(where)
        f.write(bytes([byte ^ 0x10]))
    return info.filename
