"""Damaged files are caught before their tensors are used.

- torch zip checkpoints: every record's stored CRC-32 is checked (``zipfile.testzip``);
- ``.safetensors`` files written by pvt_mm carry the SHA-256 of their data section in the
  header's metadata (``pvt_mm.sha256``), checked on read (files from elsewhere have none);
- published files named ``NAME-<first hex digits of the file's sha256>.pth`` (mmdet's
  ``publish_model`` convention, torch hub's ``check_hash``) are checked against that prefix.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from pathlib import Path

from .errors import CheckpointError

__all__ = ['check_zip_records', 'check_name_hash', 'file_sha256', 'safetensors_bytes',
           'check_safetensors_digest', 'DIGEST_KEY', 'NAME_HASH']

DIGEST_KEY = 'pvt_mm.sha256'
# NAME-<hex>.ext: 8 hex digits as mmdet's publish_model writes (torch hub takes any length)
NAME_HASH = re.compile(r'-([0-9a-f]{8,64})$')
CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike, start: int = 0) -> str:
    """Hex SHA-256 of the file's bytes from ``start`` on."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        f.seek(start)
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_zip_records(path: Path) -> None:
    """Raise naming the first record whose bytes do not match its stored CRC-32."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint (a torch zip '
                              f'checkpoint of {path.stat().st_size} bytes; truncated or '
                              f'damaged: {e})') from None
    if bad is not None:
        raise CheckpointError(f'{path} is damaged: record {bad!r} does not match its stored '
                              'CRC-32 (a flipped or overwritten byte; copy the file again)')


def check_name_hash(path: Path) -> str | None:
    """If the file name ends in ``-<hex>`` (before the extension), check that the file's
    SHA-256 starts with it; returns the digest checked, or None for names without one.
    A mismatch raises, except for an all-digit suffix (a date such as ``-20240101``), which
    may not be a hash at all: that is only reported in the return value's absence."""
    match = NAME_HASH.search(path.stem)
    if match is None:
        return None
    digest = file_sha256(path)
    if digest.startswith(match[1]):
        return digest
    if match[1].isdigit():
        return None
    raise CheckpointError(f'{path} is damaged or renamed: its name says its sha256 starts with '
                          f'{match[1]}, its content hashes to {digest[:len(match[1])]}...')


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
