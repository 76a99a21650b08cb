"""Plain-data stand-ins for the standard-library objects real training tools put in checkpoint
metadata: ``datetime`` values, ``pathlib`` paths, timm ``train.py``'s ``argparse.Namespace``
and the empty ``bytes`` of protocol-2 pickles (an empty numpy array's data).

Each is rebuilt from plain numbers and strings through the class's public constructor (which
validates them); the real ``__reduce__`` / ``__setstate__`` never sees file data. Registered
for pvt_mm's loads only (:func:`pvt_mm.loading.safe_pickle.stand_ins`).
"""
from __future__ import annotations

import argparse
import datetime as dt
import pathlib
import pickle
from typing import Any

__all__ = ['plain_stand_ins', 'NamespaceRecord', 'refuse']


def refuse(what: str) -> None:
    """Raise the error every stand-in raises: ``refused <what>``."""
    raise pickle.UnpicklingError(f'refused {what}')


_refuse = refuse


def _ints(data: Any, size: int, what: str) -> bytes:
    if type(data) is not bytes or len(data) != size:
        _refuse(f'{what} state {type(data).__name__}: {size} bytes expected')
    return data


def _time_fields(b: bytes) -> tuple[int, int, int, int, int]:
    """hour, minute, second, microsecond, fold of datetime's 6-byte time state."""
    return b[0], b[1], b[2], b[3] << 16 | b[4] << 8 | b[5], 0


def _tzinfo(tz: Any) -> dt.tzinfo | None:
    if tz is not None and type(tz) is not dt.timezone:
        _refuse(f'a datetime tzinfo of type {type(tz).__name__} (only datetime.timezone)')
    return tz


def _datetime(data: Any, tz: Any = None) -> dt.datetime:
    b = _ints(data, 10, 'datetime')
    fold, month = b[2] >> 7, b[2] & 0x7F
    h, m, s, us, _ = _time_fields(b[4:])
    try:
        return dt.datetime(b[0] << 8 | b[1], month, b[3], h, m, s, us, _tzinfo(tz), fold=fold)
    except ValueError as e:
        _refuse(f'datetime: {e}')


def _date(data: Any) -> dt.date:
    b = _ints(data, 4, 'date')
    try:
        return dt.date(b[0] << 8 | b[1], b[2], b[3])
    except ValueError as e:
        _refuse(f'date: {e}')


def _time(data: Any, tz: Any = None) -> dt.time:
    b = _ints(data, 6, 'time')
    fold, hour = b[0] >> 7, b[0] & 0x7F
    _, m, s, us, _ = _time_fields(b)
    try:
        return dt.time(hour, m, s, us, _tzinfo(tz), fold=fold)
    except ValueError as e:
        _refuse(f'time: {e}')


def _timedelta(*args: Any) -> dt.timedelta:
    if len(args) > 3 or not all(type(a) is int for a in args):
        _refuse('timedelta arguments other than (days, seconds, microseconds) integers')
    try:
        return dt.timedelta(*args)
    except OverflowError as e:
        _refuse(f'timedelta: {e}')


def _timezone(*args: Any) -> dt.timezone:
    if not (1 <= len(args) <= 2 and type(args[0]) is dt.timedelta
            and (len(args) == 1 or type(args[1]) is str)):
        _refuse('timezone arguments other than (timedelta[, name])')
    try:
        return dt.timezone(*args)
    except ValueError as e:
        _refuse(f'timezone: {e}')


def _path(kind: type) -> Any:
    def build(*parts: Any) -> pathlib.PurePath:
        if not all(type(p) is str for p in parts):
            _refuse(f'{kind.__name__} parts other than strings')
        return kind(*parts)
    build.__name__ = f'_{kind.__name__}'
    return build


class NamespaceRecord:
    """A pickled ``argparse.Namespace``: its attribute dict (string keys), nothing else;
    :func:`pvt_mm.loading.safe_pickle.materialize` makes the real ``Namespace``."""

    def __new__(cls, *args: Any) -> NamespaceRecord:
        if args:
            _refuse('argparse.Namespace called with arguments')
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        if 'fields' in vars(self):
            _refuse('a second state for an argparse.Namespace')
        if type(state) is not dict or not all(type(k) is str for k in state):
            _refuse('an argparse.Namespace state other than a dict of names')
        self.fields = state

    def build(self, walk: Any) -> argparse.Namespace:
        return argparse.Namespace(**{k: walk(v) for k, v in vars(self).get('fields', {}).items()})


def _bytes(*args: Any) -> bytes:
    """``bytes()`` as protocol 2 pickles an empty bytes object; never ``bytes(n)``."""
    if args:
        _refuse(f'bytes{args!r:.40}: only the empty bytes object is built this way')
    return b''


def plain_stand_ins() -> list[tuple[Any, str]]:
    """(stand-in, pickled name) pairs."""
    pure = pathlib.PurePosixPath, pathlib.PureWindowsPath
    paths = [(_path(pathlib.PosixPath), 'pathlib.PosixPath'),
             (_path(pure[0]), 'pathlib.PurePosixPath'),
             (_path(pure[1]), 'pathlib.PureWindowsPath'),
             (_path(pure[1]), 'pathlib.WindowsPath'),  # not a usable path here: pure
             (_path(pathlib.PosixPath), 'pathlib.Path')]
    return [(_datetime, 'datetime.datetime'), (_date, 'datetime.date'),
            (_time, 'datetime.time'), (_timedelta, 'datetime.timedelta'),
            (_timezone, 'datetime.timezone'), (NamespaceRecord, 'argparse.Namespace'),
            (_bytes, 'builtins.bytes'), *paths]
