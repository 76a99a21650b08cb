"""The metadata an end-to-end export stores in its .onnx (``metadata_props``), read without
the ``onnx`` package or a runtime: the file's top-level protobuf fields are walked (the graph
is skipped by its length, never parsed or copied) and the ``metadata_props`` entries decoded.

An ONNX file is a serialised ``ModelProto``; its field 14 is ``repeated StringStringEntryProto
metadata_props`` (key = field 1, value = field 2, both strings)."""
from __future__ import annotations

import json
import mmap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

METADATA_KEY = 'pvt_mm.deploy'
_METADATA_PROPS = 14  # ModelProto.metadata_props
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    """(value, next position) of the base-128 varint at ``pos``; ValueError past ``end``."""
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError('truncated or malformed protobuf varint')
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, pos: int, end: int):
    """(field number, wire type, payload start, payload end) of each field in buf[pos:end]."""
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            _, nxt = _varint(buf, pos, end)
        elif wire == _BYTES:
            size, pos = _varint(buf, pos, end)
            nxt = pos + size
        elif wire in (_FIXED64, _FIXED32):
            nxt = pos + (8 if wire == _FIXED64 else 4)
        else:
            raise ValueError(f'unsupported protobuf wire type {wire}')
        if number == 0 or nxt > end:
            raise ValueError('truncated or malformed protobuf field')
        yield number, wire, pos, nxt
        pos = nxt


@contextmanager
def model_fields(path: str | Path) -> Iterator[tuple[memoryview, int]]:
    """The ONNX file ``path`` mapped read-only: (buffer, size) for :func:`_fields`. ValueError
    naming the file when it is empty, or when the walk inside the block meets a malformed
    protobuf (a message already naming the file passes unchanged)."""
    with open(path, 'rb') as f:
        size = f.seek(0, 2)
        if size == 0:
            raise ValueError(f'{path} is empty (0 bytes), not an ONNX model')
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            buf = memoryview(mapped)
            try:
                yield buf, size
            except (ValueError, UnicodeDecodeError) as e:
                if str(path) in str(e):
                    raise
                raise ValueError(f'{path} is not a valid ONNX model file ({e})') from None
            finally:
                buf.release()


def read_onnx_metadata_props(path: str | Path) -> dict[str, str]:
    """All ``metadata_props`` of the ONNX model file ``path`` as {key: value}.
    ValueError when the file is not a well-formed protobuf message."""
    props = {}
    with model_fields(path) as (buf, size):
        for number, wire, start, end in _fields(buf, 0, size):
            if number != _METADATA_PROPS or wire != _BYTES:
                continue
            entry = {n: bytes(buf[a:b]) for n, w, a, b in _fields(buf, start, end)
                     if w == _BYTES and n in (1, 2)}
            props[entry.get(1, b'').decode()] = entry.get(2, b'').decode()
    return props


def read_metadata(path: str | Path) -> dict:
    """The JSON an end-to-end export stored in ``path``'s ``metadata_props``; ValueError if
    there is none."""
    props = read_onnx_metadata_props(path)
    if METADATA_KEY not in props:
        raise ValueError(f'{path} has no {METADATA_KEY} metadata: not an end-to-end export '
                         '(tools/export_onnx.py --end2end)')
    return json.loads(props[METADATA_KEY])
