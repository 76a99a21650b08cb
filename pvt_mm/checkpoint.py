"""Offline, safe and strict loading of pretrained PVT weights, and atomic checkpoint writes.

Every checkpoint is read by :func:`read_checkpoint`: the format is detected from the file's
content (torch zip, legacy torch pickle, ``.safetensors``); pickles go through
``torch.load(weights_only=True)``, with the few non-tensor globals of mmengine Runner
checkpoints allowed only for the duration of that one load (:func:`runner_checkpoint_globals`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.logging import print_log
from torch import nn

from .convert import CheckpointError, _listing, convert_pvt_checkpoint
from .models.backbones.pretrained import fit_state_dict

__all__ = ['resolve_checkpoint', 'read_checkpoint', 'write_checkpoint', 'load_pretrained',
           'check_state_dict', 'state_dict_problems', 'runner_checkpoint_globals']

REMOTE_SCHEMES = ('http', 'https')
FORMATS = ('torch', 'safetensors')
ZIP_MAGIC = b'PK\x03\x04'
PICKLE_PROTO = 0x80  # first byte of a (legacy torch.save) pickle of protocol >= 2
# mmengine's HistoryBuffer pickles its default statistic methods (HistoryBuffer.mean, ...)
# as getattr(HistoryBuffer, 'mean') (pickle protocol 2 cannot name nested functions)
HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')
# HistoryBuffers keep logged values as float64 arrays and their counts as int64 ones
NUMPY_LOG_DTYPES = (np.float64, np.int64, np.float32, np.int32, np.bool_)


def hub_checkpoint_dir() -> Path:
    """Where torch (and mmengine) cache downloaded checkpoints: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / 'checkpoints'


def resolve_checkpoint(source: str | os.PathLike) -> Path:
    """A local path, or a release URL / bare file name looked up in the torch hub cache.

    Nothing is downloaded: a missing file raises FileNotFoundError saying where to put it.
    """
    text = os.fspath(source)
    scheme = urlparse(text).scheme
    if '://' in text and scheme not in REMOTE_SCHEMES:
        raise FileNotFoundError(f'checkpoint {text!r}: the {scheme}:// scheme is not supported; '
                                'give a local path or a http(s) release URL')
    name = Path(urlparse(text).path).name if scheme in REMOTE_SCHEMES else Path(text).name
    candidates = [] if scheme in REMOTE_SCHEMES else [Path(text).expanduser()]
    candidates.append(hub_checkpoint_dir() / name)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f'pretrained checkpoint {text!r} not found (nothing is downloaded). Put {name} at '
        f'{hub_checkpoint_dir() / name} (the torch hub cache; TORCH_HOME moves it), or point '
        f'the config at a local file: --cfg-options model.backbone.init_cfg.checkpoint=/path/'
        f'to/{name}')


# ---- the scoped allow-list for mmengine Runner checkpoints --------------------------------
def _history_buffer_method(obj: Any, name: str) -> Any:
    """Stands in for ``builtins.getattr`` while a Runner checkpoint is unpickled: resolves
    only ``HistoryBuffer.<min|max|current|mean>`` and refuses everything else (the
    ``getattr(getattr, '__self__')`` route to ``eval``, any other object or attribute)."""
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and name in HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'Unsupported global: getattr({_short_repr(obj)}, {name!r}) is refused; a checkpoint '
        f'may only reference HistoryBuffer.{"/".join(HISTORY_BUFFER_METHODS)} this way')


def _short_repr(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + '...'


def _runner_globals() -> list[Any]:
    """The non-tensor globals in mmengine Runner checkpoints (found with
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` on detection and segmentation,
    epoch- and iteration-based runs): the message hub's ``HistoryBuffer`` (numpy arrays and
    scalars inside, numpy dtypes rebuilt through their classes) and its statistic methods,
    reached through the restricted ``getattr`` stand-in."""
    from mmengine.logging.history_buffer import HistoryBuffer
    multiarray = (getattr(np, '_core', None) or np.core).multiarray  # numpy 2 renamed core
    dtype_classes = [type(np.dtype(t)) for t in NUMPY_LOG_DTYPES]
    return [HistoryBuffer, (_history_buffer_method, 'builtins.getattr'),
            multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]


@contextlib.contextmanager
def runner_checkpoint_globals() -> Iterator[None]:
    """Allow exactly the globals of mmengine Runner checkpoints in ``torch.load(weights_only=
    True)`` inside this block only; torch's allow-list is left as it was found."""
    present = set(torch.serialization.get_safe_globals())
    added = [g for g in _runner_globals() if g not in present]
    # the real getattr, if someone allow-listed it process-wide, would clash with the
    # stand-in's name: it is set aside during this load (and restored after)
    shadowed = [g for g in present if g is getattr]
    if shadowed:
        print_log('builtins.getattr is allow-listed process-wide for torch.load(weights_only='
                  'True), which lets a checkpoint run code; pvt_mm ignores it for its loads',
                  logger='current', level=logging.WARNING)
    if shadowed:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals([g for g in present if g is not getattr])
    try:
        with torch.serialization.safe_globals(added):
            yield
    finally:
        if shadowed:
            torch.serialization.add_safe_globals(shadowed)


# ---- reading --------------------------------------------------------------------------
def _is_safetensors(head: bytes, size: int) -> bool:
    """8-byte little-endian header length, then a JSON header starting with '{'."""
    return (len(head) >= 9 and head[8:9] == b'{'
            and 2 <= int.from_bytes(head[:8], 'little') <= size - 8)


def _describe(head: bytes, size: int) -> str:
    """What a file that is no checkpoint looks like, for error messages."""
    text = head.lstrip()
    if text[:1] == b'<':
        return f'an HTML/XML page ({size} bytes; a failed download?) starting with {head[:40]!r}'
    try:
        head.decode('utf-8')
        if all(32 <= b < 127 or b in b'\t\r\n' for b in head):
            return f'a text file ({size} bytes) starting with {head[:40]!r}'
    except UnicodeDecodeError:
        pass
    return f'an unknown format ({size} bytes) starting with {head[:16]!r}'


def read_checkpoint(path: str | os.PathLike, map_location: Any = 'cpu') -> Any:
    """Read a checkpoint safely: torch zip or legacy pickle through ``torch.load(weights_only=
    True)`` (mmengine Runner checkpoints included, see :func:`runner_checkpoint_globals`), or a
    ``.safetensors`` file, told apart by content. Any failure raises :class:`CheckpointError`
    naming the file and what was found in it."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f'{path} is a directory, not a checkpoint file')
    try:
        size = path.stat().st_size
        with open(path, 'rb') as f:
            head = f.read(64)
    except OSError as e:
        raise CheckpointError(f'cannot read checkpoint {path}: {e}') from e
    if size == 0:
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint: the file is empty '
                              '(0 bytes; an interrupted download or copy?)')
    if _is_safetensors(head, size):
        return _read_safetensors(path, map_location)
    if head[:4] == ZIP_MAGIC:
        kind = f'a torch zip checkpoint of {size} bytes'
    elif head[0] == PICKLE_PROTO:
        kind = f'a pickle of {size} bytes'
    else:
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint: found '
                              f'{_describe(head, size)}')
    try:
        with runner_checkpoint_globals():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _first_line(e)
        if any(w in detail for w in ('GLOBAL', 'Unsupported global', 'unrecognized function')):
            raise CheckpointError(
                f'{path} references Python objects other than tensors and plain containers and '
                f'is not loaded (torch.load weights_only=True): {detail}') from None
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint ({kind}, corrupt, '
                              f'truncated, or not written by torch.save): {detail}') from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, KeyError, OSError) as e:
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint ({kind}; corrupt or '
                              f'truncated?): {type(e).__name__}: {_first_line(e)}') from None


def _read_safetensors(path: Path, map_location: Any) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    device = map_location if isinstance(map_location, str) else 'cpu'
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f'{path} is not a readable .safetensors file (truncated or '
                              f'corrupt?): {e}') from None


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    detail = [ln for ln in lines if 'GLOBAL' in ln or 'Unsupported' in ln
              or 'unrecognized function' in ln]
    return (detail or lines or [type(e).__name__])[0].strip()


# ---- writing --------------------------------------------------------------------------
def checkpoint_format(dst: str | os.PathLike, fmt: str | None = None) -> str:
    """``fmt`` if given, else ``'safetensors'`` for a ``.safetensors`` name, else ``'torch'``."""
    if fmt is None:
        fmt = 'safetensors' if str(dst).endswith('.safetensors') else 'torch'
    if fmt not in FORMATS:
        raise ValueError(f'checkpoint format {fmt!r} is not one of {FORMATS}')
    return fmt


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be synced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``dst``; once the block has written it completely, it is
    synced to disk and renamed over ``dst`` (readers see the old file or the new one, never a
    part). On error the temporary file is removed and ``dst`` is untouched."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{dst.name}.', suffix='.tmp', dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0o22)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as open() would create it (mkstemp makes it 0600)
    try:
        yield tmp
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dst.parent)


def write_checkpoint(obj: Mapping[str, Any], dst: str | os.PathLike, fmt: str | None = None
                     ) -> Path:
    """Write ``obj`` atomically (:func:`atomic_path`) with ``torch.save`` or, for the
    safetensors format (a flat ``{name: tensor}`` dict), ``safetensors.torch.save_file``."""
    fmt = checkpoint_format(dst, fmt)
    with atomic_path(dst) as tmp:
        if fmt == 'safetensors':
            from safetensors.torch import save_file
            bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            if bad:
                raise CheckpointError(f'safetensors holds tensors only; not tensors: '
                                      f'{_listing(bad)}')
            save_file({k: v.contiguous() for k, v in obj.items()}, str(tmp))
        else:
            torch.save(obj, tmp)
    return Path(dst)


# ---- checking and loading -------------------------------------------------------------
def state_dict_problems(expected: Mapping[str, torch.Tensor],
                        state_dict: Mapping[str, Any]) -> list[str]:
    """Missing, unexpected and mis-shaped keys of ``state_dict`` against ``expected`` (the
    first few of each, with counts); empty when they match."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}'
              for k, v in state_dict.items()
              if k in expected and hasattr(v, 'shape') and v.shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing key(s): {_listing(missing, 5)}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected key(s): {_listing(unexpected, 5)}')
    if shapes:
        problems.append(f'{len(shapes)} shape mismatch(es): {_listing(shapes, 5)}')
    return problems


def model_name(model: nn.Module) -> str:
    """``PVTv2 (b0)``: the class and, where known, the variant by its table name."""
    arch = getattr(model, 'arch_name', None)
    if arch is None and isinstance(getattr(model, 'arch', None), str):
        arch = model.arch
    return f'{type(model).__name__}{f" ({arch})" if arch else ""}'


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor],
                     source: str | os.PathLike | None = None) -> None:
    """Raise CheckpointError naming the file, the model, and missing, unexpected and
    mis-shaped keys."""
    problems = state_dict_problems(model.state_dict(), state_dict)
    if problems:
        where = f'{source} ' if source is not None else 'checkpoint '
        raise CheckpointError(f'{where}does not match {model_name(model)}: '
                              + '; '.join(problems))


def load_pretrained(model: nn.Module, source: str | os.PathLike, prefix: str | None = None
                    ) -> None:
    """Resolve, read safely, convert and load ``source`` into ``model`` with ``strict=True``."""
    path = resolve_checkpoint(source)
    if prefix and not prefix.endswith('.'):
        prefix += '.'  # as mmengine's Pretrained init: 'backbone' means 'backbone.'
    try:
        state_dict = convert_pvt_checkpoint(read_checkpoint(path), prefix=prefix)
    except CheckpointError as e:
        raise e if str(path) in str(e) else CheckpointError(f'{path}: {e}') from None
    state_dict = fit_state_dict(model, state_dict)  # in_channels != 3, stages not built
    check_state_dict(model, state_dict, source=path)
    model.load_state_dict(state_dict, strict=True)
    print_log(f'loaded pretrained {type(model).__name__} weights from {path}', logger='current')
