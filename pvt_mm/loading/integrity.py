"""Damaged files are caught before their tensors are used.

- torch zip checkpoints: the layout is one ``torch.save`` writes (stored records, unique names,
  no overlaps: checked from the central directory, nothing is decompressed), then every
  record's stored CRC-32 is checked (``zipfile.testzip``, reading each record once);
- ``.safetensors`` files written by pvt_mm carry the SHA-256 of their data section in the
  header's metadata (``pvt_mm.sha256``), checked on read (files from elsewhere have none);
- published checkpoints (``meta`` + ``state_dict`` only) named ``NAME-<8 hex digits>.pth``
  (mmdet's ``publish_model`` convention) are checked against that sha256 prefix; no other
  file is refused for its name.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from pathlib import Path

from .errors import CheckpointError

__all__ = ['check_zip_records', 'check_name_hash', 'name_hash', 'file_sha256', 'safetensors_bytes',
           'check_safetensors_digest', 'DIGEST_KEY', 'NAME_HASH']

DIGEST_KEY = 'pvt_mm.sha256'
# NAME-<8 hex digits>.ext, as mmengine's / mmdet's publish_model writes
NAME_HASH = re.compile(r'-([0-9a-f]{8})$')
CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike, start: int = 0) -> str:
    """Hex SHA-256 of the file's bytes from ``start`` on."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        f.seek(start)
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _zip_layout_problem(path: Path, archive: zipfile.ZipFile) -> str | None:
    """What makes ``archive`` something ``torch.save`` never writes, read from its central
    directory only (nothing is decompressed): a compressed record, a name listed twice, or
    records whose bytes overlap each other or the central directory (the overlapped-entries
    zip bomb, where one record is listed thousands of times)."""
    infos = archive.infolist()
    packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        return (f'{len(packed)} compressed record(s) ({packed[0]!r}, ...); torch.save stores '
                'every record uncompressed')
    seen: set[str] = set()
    for info in infos:
        if info.filename in seen:
            return f'the record name {info.filename!r} is listed more than once'
        seen.add(info.filename)
    end_of_data = archive.start_dir
    spans = []
    with open(path, 'rb') as f:
        for info in sorted(infos, key=lambda i: i.header_offset):
            f.seek(info.header_offset)
            local = f.read(30)
            if len(local) != 30 or local[:4] != b'PK\x03\x04':
                return f'record {info.filename!r} has no local header where the directory says'
            name_len, extra_len = (int.from_bytes(local[26 + 2 * k:28 + 2 * k], 'little')
                                   for k in range(2))
            start = info.header_offset + 30 + name_len + extra_len
            if info.compress_size != info.file_size:
                return f'record {info.filename!r} claims {info.file_size} bytes in ' \
                       f'{info.compress_size} stored bytes'
            spans.append((info.header_offset, start + info.compress_size, info.filename))
    for (lo, hi, name), nxt in zip(spans, [s[0] for s in spans[1:]] + [end_of_data]):
        if hi > nxt:
            return f'record {name!r} overlaps the next record or the central directory'
    return None


def check_zip_records(path: Path) -> None:
    """Raise naming what is wrong with a torch zip checkpoint: a layout ``torch.save`` never
    writes (:func:`_zip_layout_problem`: refused before any record is read, so the CRC check
    reads at most the file's own bytes), or the first record whose bytes do not match its
    stored CRC-32."""
    try:
        with zipfile.ZipFile(path) as archive:
            problem = _zip_layout_problem(path, archive)
            if problem is not None:
                raise CheckpointError(f'{path} is not a checkpoint torch.save writes: {problem} '
                                      '(refused without decompressing anything)')
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint (a torch zip '
                              f'checkpoint of {path.stat().st_size} bytes; truncated or '
                              f'damaged: {e})') from None
    if bad is not None:
        raise CheckpointError(f'{path} is damaged: record {bad!r} does not match its stored '
                              'CRC-32 (a flipped or overwritten byte; copy the file again)')


def name_hash(path: Path) -> str | None:
    """The sha256 prefix a published file's name carries: exactly 8 lowercase hex digits after
    the last ``-`` (mmengine's / mmdet's ``publish_model``: ``NAME-<sha256[:8]>.pth``), not all
    digits (a date such as ``-20240101``); None for any other name. A link is judged by the
    name of the file it points to when its own name carries none."""
    for name in (path.name, path.resolve().name if path.is_symlink() else None):
        match = NAME_HASH.search(Path(name).stem) if name else None
        if match and not match[1].isdigit():
            return match[1]
    return None


def check_name_hash(path: Path) -> str | None:
    """For a published file (:func:`name_hash`), check that its SHA-256 starts with the
    prefix its name carries; returns the digest checked, or None when the name carries none.
    Call it only for files whose content is a published checkpoint (``meta`` and
    ``state_dict`` only): any other file is never refused for its name."""
    prefix = name_hash(path)
    if prefix is None:
        return None
    digest = file_sha256(path)
    if digest.startswith(prefix):
        return digest
    raise CheckpointError(f'{path} is damaged or renamed: it is a published checkpoint whose '
                          f'name says its sha256 starts with {prefix}, but its content hashes '
                          f'to {digest[:8]}... (changed after publishing, or another file '
                          'under a published name; publish it again)')


def _header(path: Path) -> tuple[int, dict]:
    with open(path, 'rb') as f:
        size = int.from_bytes(f.read(8), 'little')
        header = json.loads(f.read(size))
    return 8 + size, header


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file's bytes with the SHA-256 of its data section in the metadata
    (and ``format: pt``, which transformers expects when metadata is present)."""
    from safetensors.torch import save
    plain = save(tensors)
    start = 8 + int.from_bytes(plain[:8], 'little')
    meta = {'format': 'pt', **(metadata or {}),
            DIGEST_KEY: hashlib.sha256(memoryview(plain)[start:]).hexdigest()}
    return save(tensors, metadata=meta)


def check_safetensors_digest(path: Path) -> bool:
    """Check the data section against the header's ``pvt_mm.sha256``; False when the file
    carries no digest (written elsewhere), True when it matched; raises when it does not."""
    try:
        start, header = _header(path)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f'{path} is not a readable .safetensors file (its header: '
                              f'{e})') from None
    meta = header.get('__metadata__') or {}
    expected = meta.get(DIGEST_KEY) if isinstance(meta, dict) else None
    if expected is None:
        return False
    actual = file_sha256(path, start)
    if actual != expected:
        raise CheckpointError(f'{path} is damaged: its tensor data hashes to {actual[:16]}..., '
                              f'the sha256 written in its header is {str(expected)[:16]}... '
                              '(a flipped or overwritten byte; copy the file again)')
    return True
