"""Offline, safe and strict loading of pretrained PVT weights, and atomic checkpoint writes.

Every checkpoint is read by :func:`read_checkpoint`: the format is detected from the file's
content (torch zip, legacy torch pickle, ``.safetensors``), damage is caught first
(:mod:`.integrity`), and pickles go through torch's ``weights_only`` unpickler with an allow-list
of that one load's own (:mod:`.weights_unpickler`): plain-data stand-ins for the non-tensor
globals of mmengine Runner checkpoints (:mod:`.safe_pickle`); torch's process-wide allow-list
is never read or changed.
``import pvt_mm`` routes mmengine's own local-file loader through it
(:func:`use_safe_mmengine_loader`).
"""
from __future__ import annotations

import contextlib
import os
import tarfile
import pickle
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.logging import print_log

from .errors import CheckpointError
from .errors import listing as _listing
from .integrity import (check_name_hash, check_safetensors_digest, check_zip_records,
                        file_sha256, safetensors_bytes)
from . import safe_pickle
from .safe_pickle import materialize
from .state_check import check_state_dict, model_name, state_dict_problems  # noqa: F401
from .weights_unpickler import DeclaredDataError, allowed_names, load_weights_only

__all__ = ['resolve_checkpoint', 'read_checkpoint', 'write_checkpoint', 'check_state_dict',
           'state_dict_problems', 'remove_stale_temp_files',
           'use_safe_mmengine_loader', 'publish_checkpoint', 'folder_weights']

REMOTE_SCHEMES = ('http', 'https')
FORMATS = ('torch', 'safetensors')
ZIP_MAGIC = b'PK\x03\x04'
PICKLE_PROTO = 0x80  # first byte of a (legacy torch.save) pickle of protocol >= 2


def hub_checkpoint_dir() -> Path:
    """Where torch (and mmengine) cache downloaded checkpoints: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / 'checkpoints'


WEIGHTS_NAMES = ('model.safetensors', 'pytorch_model.bin')  # in the order transformers prefers


def folder_weights(folder: str | os.PathLike) -> Path:
    """The weights file of a transformers folder (``model.safetensors``, else
    ``pytorch_model.bin``; with both, a warning says which is read); a folder without one
    raises :class:`CheckpointError` saying so."""
    folder = Path(folder)
    present = [folder / n for n in WEIGHTS_NAMES if (folder / n).is_file()]
    if len(present) > 1:
        print_log(f'{folder} holds both {" and ".join(WEIGHTS_NAMES)}: reading '
                  f'{WEIGHTS_NAMES[0]} (as transformers does); {WEIGHTS_NAMES[1]} is ignored',
                  logger='current', level=30)
    if present:
        return present[0]
    held = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    sharded = [n for n in held if n.endswith('.index.json')]
    if sharded:
        raise CheckpointError(f'{folder} is a directory with a sharded checkpoint ({sharded[0]}); '
                              'PVT weights fit one file: save it with a larger max_shard_size')
    raise CheckpointError(f'{folder} is a directory without {" or ".join(WEIGHTS_NAMES)} (the '
                          f'weights of a transformers save_pretrained / hub snapshot folder); it '
                          f'holds {_listing(held, 6) if held else "nothing"}')


def resolve_checkpoint(source: str | os.PathLike) -> Path:
    """A local path, or a release URL / bare file name looked up in the torch hub cache.
    A local folder (transformers ``save_pretrained`` / hub snapshot) gives its weights file.

    Nothing is downloaded: a missing file raises FileNotFoundError saying where to put it.
    """
    text = os.fspath(source)
    scheme = urlparse(text).scheme
    if '://' in text and scheme not in REMOTE_SCHEMES:
        raise FileNotFoundError(f'checkpoint {text!r}: the {scheme}:// scheme is not supported; '
                                'give a local path or a http(s) release URL')
    name = Path(urlparse(text).path).name if scheme in REMOTE_SCHEMES else Path(text).name
    candidates = [] if scheme in REMOTE_SCHEMES else [Path(text).expanduser()]
    if candidates and candidates[0].is_dir():
        return folder_weights(candidates[0])  # or an error saying which files are missing
    candidates.append(hub_checkpoint_dir() / name)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f'pretrained checkpoint {text!r} not found (nothing is downloaded). Put {name} at '
        f'{hub_checkpoint_dir() / name} (the torch hub cache; TORCH_HOME moves it), or point '
        f'the config at a local file: --cfg-options model.backbone.init_cfg.checkpoint=/path/'
        f'to/{name}')


# ---- reading --------------------------------------------------------------------------
def _is_safetensors(head: bytes, size: int) -> bool:
    """8-byte little-endian header length, then a JSON header starting with '{'."""
    return (len(head) >= 9 and head[8:9] == b'{'
            and 2 <= int.from_bytes(head[:8], 'little') <= size - 8)


def _describe(head: bytes, size: int, show: bool = True) -> str:
    """What a file that is no checkpoint looks like, for error messages (``show``: quote its
    first bytes; never for a link, which may point at any file of the system)."""
    text = head.lstrip()
    quote = (lambda n: f' starting with {head[:n]!r}') if show else (lambda n: '')
    if text[:1] == b'<':
        return f'an HTML/XML page ({size} bytes; a failed download?){quote(40)}'
    try:
        head.decode('utf-8')
        if all(32 <= b < 127 or b in b'\t\r\n' for b in head):
            return f'a text file ({size} bytes){quote(40)}'
    except UnicodeDecodeError:
        pass
    return f'an unknown format ({size} bytes){quote(16)}'


def _check_pickle_container(path: Path, zipped: bool) -> None:
    """Refuse what ``torch.load`` would hand to other loaders: a TorchScript archive
    (``torch.jit.load``) or a legacy tar checkpoint."""
    if zipped:
        import zipfile
        with zipfile.ZipFile(path) as archive:
            if any(n.rsplit('/', 1)[-1] == 'constants.pkl' for n in archive.namelist()):
                raise CheckpointError(f'{path} is a TorchScript archive (torch.jit.save), not a '
                                      'checkpoint; load it with torch.jit.load if you trust it')
    elif tarfile.is_tarfile(path):
        raise CheckpointError(f'{path} is a legacy tar-format torch checkpoint, which pvt_mm '
                              'does not read; re-save it with a current torch.save')


def _is_published(checkpoint: Any) -> bool:
    """What ``publish_model`` writes: ``state_dict`` (and ``meta``), nothing else."""
    return isinstance(checkpoint, Mapping) and 'state_dict' in checkpoint \
        and set(checkpoint) <= set(PUBLISHED_KEYS)


def read_checkpoint(path: str | os.PathLike, map_location: Any = 'cpu') -> Any:
    """Read a checkpoint safely: torch zip or legacy pickle through torch's ``weights_only``
    unpickler with an allow-list of this load's own (plain-data stand-ins for mmengine's
    Runner globals, :mod:`pvt_mm.loading.weights_unpickler`), or a ``.safetensors`` file, told apart
    by content. Damage is caught first (zip layout and CRC-32s, pvt_mm's safetensors digest);
    a published checkpoint (``meta`` + ``state_dict``) named ``NAME-<8 hex>.pth`` is checked
    against that sha256 prefix. Any failure raises :class:`CheckpointError` naming the file
    and what was found."""
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
    kind = f'a file of {size} bytes'
    try:
        if _is_safetensors(head, size):
            check_safetensors_digest(path)
            return _read_safetensors(path, map_location)
        if head[:4] == ZIP_MAGIC:
            kind = f'a torch zip checkpoint of {size} bytes'
            check_zip_records(path)
        elif head[0] == PICKLE_PROTO:
            kind = f'a pickle of {size} bytes'
        else:
            raise CheckpointError(f'{path} is not a readable PyTorch checkpoint: found '
                                  f'{_describe(head, size, show=not path.is_symlink())}')
        _check_pickle_container(path, head[:4] == ZIP_MAGIC)
        checkpoint = materialize(load_weights_only(path, allowed_names(safe_pickle.stand_ins()),
                                                   map_location))
        if _is_published(checkpoint):
            check_name_hash(path)
        return checkpoint
    except CheckpointError as e:
        raise e if str(path) in str(e) else CheckpointError(f'{path}: {e}') from None
    except DeclaredDataError as e:
        raise CheckpointError(f'{path} is not a loadable PyTorch checkpoint ({kind}): '
                              f'{e}') from None
    except pickle.UnpicklingError as e:
        detail = _first_line(e)
        if any(w in detail for w in ('GLOBAL', 'Unsupported global', 'unrecognized function',
                                     'refused', 'Can only')):
            raise CheckpointError(
                f'{path} references Python objects other than tensors and plain containers and '
                f'is not loaded (torch.load weights_only=True): {detail}') from None
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint ({kind}, corrupt, '
                              f'truncated, or not written by torch.save): {detail}') from None
    except MemoryError:
        raise CheckpointError(f'{path} ({kind}) needs more memory than this process can get '
                              '(declared sizes larger than the data?)') from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: B036  whatever a crafted file provokes is named
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint (corrupt, truncated '
                              f'or crafted): {type(e).__name__}: {_first_line(e)}') from None


def _read_safetensors(path: Path, map_location: Any) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    device = map_location if isinstance(map_location, str) else 'cpu'
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f'{path} is not a readable .safetensors file (truncated or '
                              f'corrupt?): {e}') from None


UNPICKLER_PREFIX = 'WeightsUnpickler error:'


def _first_line(e: BaseException) -> str:
    """The line of torch's message that says what was found (never its advice to load
    with ``weights_only=False``)."""
    text = str(e)
    if UNPICKLER_PREFIX in text:  # torch's wrapper: the unpickler's own words follow
        text = text.split(UNPICKLER_PREFIX, 1)[1]
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.startswith('Check the documentation')]
    detail = [ln for ln in lines if 'GLOBAL' in ln or 'Unsupported' in ln
              or 'unrecognized function' in ln or 'refused' in ln]
    lines = [ln for ln in lines if 'weights_only' not in ln]
    return (detail or lines or [type(e).__name__])[0]


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


# atomic_path's temporary files: '.<target name>.<mkstemp's 8 characters>.tmp'
TEMP_NAME = re.compile(r'^\..+\.[a-z0-9_]{8}\.tmp$')


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left in ``directory`` when its writer
    was killed part-way (call it where no save of this process is under way); returns them."""
    folder = Path(directory)
    stale = [p for p in folder.iterdir() if TEMP_NAME.match(p.name) and p.is_file()] \
        if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        print_log(f'removed {len(stale)} incomplete checkpoint file(s) of an interrupted save: '
                  f'{", ".join(p.name for p in stale)}', logger='current')
    return stale


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


def write_checkpoint(obj: Mapping[str, Any], dst: str | os.PathLike, fmt: str | None = None,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write ``obj`` atomically (:func:`atomic_path`) with ``torch.save`` or, for the
    safetensors format (a flat ``{name: tensor}`` dict), as safetensors with the SHA-256 of
    its data and ``metadata`` in its header (:func:`pvt_mm.loading.integrity.safetensors_bytes`)."""
    fmt = checkpoint_format(dst, fmt)
    with atomic_path(dst) as tmp:
        if fmt == 'safetensors':
            bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            if bad:
                raise CheckpointError(f'safetensors holds tensors only; not tensors: '
                                      f'{_listing(bad)}')
            tmp.write_bytes(safetensors_bytes({k: v.contiguous() for k, v in obj.items()},
                                              metadata))
        else:
            torch.save(obj, tmp)
    return Path(dst)


# ---- mmengine's own loaders ------------------------------------------------------------
def load_local_checkpoint(filename: str, map_location: Any = None) -> Any:
    """mmengine's local-file checkpoint loader (``CheckpointLoader`` scheme ``''``), reading
    through :func:`read_checkpoint`."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return read_checkpoint(filename, map_location='cpu' if map_location is None
                           else map_location)


def use_safe_mmengine_loader() -> None:
    """Route every local checkpoint load of mmengine's ``load_checkpoint`` (mmdet's
    ``DetInferencer`` / ``init_detector``, mmseg's ``MMSegInferencer`` / ``init_model``, a
    plain ``Runner``) through :func:`read_checkpoint`: Runner checkpoints (ours and
    OpenMMLab's, with their ``HistoryBuffer`` logs) load with ``weights_only=True`` and the
    plain-data stand-ins, and nothing is added to torch's allow-list. Called by
    ``import pvt_mm``; idempotent."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)


# ---- publishing ------------------------------------------------------------------------
PUBLISHED_KEYS = ('meta', 'state_dict')


def plain(obj: Any) -> Any:
    """``obj`` with numpy arrays / scalars as lists / numbers and containers as dicts, lists
    and tuples, so ``torch.load(weights_only=True)`` reads it with no allow-list; raises
    CheckpointError on any other object."""
    if isinstance(obj, (torch.Tensor, str, bytes, int, float, bool, type(None))):
        return obj
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    if isinstance(obj, Mapping):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    raise CheckpointError(f'a {type(obj).__name__} is not plain data')


def publish_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """mmdet's ``publish_model``, safely: ``src``'s ``meta`` (as plain data) and
    ``state_dict`` only (no optimizer, message hub or schedulers), written to ``dst`` with
    the first 8 hex digits of its sha256 added to the name (``NAME-1a2b3c4d.pth``), which
    :func:`read_checkpoint` checks. Returns the published path."""
    checkpoint = read_checkpoint(src)
    if not isinstance(checkpoint, Mapping) or 'state_dict' not in checkpoint:
        raise CheckpointError(f'{src} has no state_dict: not a training checkpoint')
    dst = Path(dst)
    stem = dst.name[:-len('.pth')] if dst.name.endswith('.pth') else dst.name
    try:
        published = {'meta': plain(checkpoint.get('meta', {})),
                     'state_dict': dict(checkpoint['state_dict'])}
    except CheckpointError as e:
        raise CheckpointError(f'{src}: its meta holds {e}') from None
    tmp = write_checkpoint(published, dst.with_name(f'.{stem}.unhashed.pth'))
    final = dst.with_name(f'{stem}-{file_sha256(tmp)[:8]}.pth')
    os.replace(tmp, final)
    print_log(f'published {final} ({", ".join(PUBLISHED_KEYS)} of {src})', logger='current')
    return final
