"""Plain-data stand-ins for the non-tensor globals of OpenMMLab Runner checkpoints.

mmengine Runner checkpoints hold, beside tensors and plain containers, the message hub's
``HistoryBuffer`` objects (numpy arrays of logged values, numpy scalars, numpy dtypes) and
``getattr(HistoryBuffer, 'mean')``-style references to its statistic methods. Allow-listing
the real classes for ``torch.load(weights_only=True)`` lets the file drive their
``__setstate__``: numpy's ``dtype.__setstate__`` accepts a state that gives a dtype an
object sub-array while it claims to hold no objects (8 file bytes then become a
``PyObject*``), and ``HistoryBuffer.__setstate__`` writes the file's statistic methods into a
class-level dict of the running process.

So none of them is allow-listed. For the duration of one load (:func:`checkpoint_globals`)
torch's allow-list holds exactly the stand-ins below, registered under the names those
objects are pickled with; each accepts only plain data and raises on anything else:

- ``numpy.dtype``: float64 / float32 / int64 / int32 / bool, little-endian or native, built
  by name (no fields, sub-arrays, objects, metadata or flags);
- ``numpy.core.multiarray._reconstruct`` + ``numpy.ndarray`` and the array state: a
  C-contiguous array of such a dtype whose byte count matches its shape;
- ``numpy.core.multiarray.scalar``: one such value;
- ``mmengine...HistoryBuffer`` and ``builtins.getattr``: a buffer's max length and its two
  1-D histories; the statistic-method references resolve to names only.

:func:`materialize` then turns the stand-ins of a loaded object into real numpy arrays and
``HistoryBuffer`` objects built through their public constructors; the process's classes are
never touched by file data.
"""
from __future__ import annotations

import contextlib
import math
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ['checkpoint_globals', 'materialize', 'HISTORY_BUFFER_METHODS', 'PLAIN_DTYPES']

# the dtypes of logged values and counts; byte orders numpy pickles them with
PLAIN_DTYPES = {'f8': np.float64, 'f4': np.float32, 'i8': np.int64, 'i4': np.int32,
                'b1': np.bool_}
BYTE_ORDERS = ('<', '|', '=')
HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')
HISTORY_BUFFER = 'mmengine.logging.history_buffer.HistoryBuffer'
HISTORY_KEYS = {'max_length', '_log_history', '_count_history'}
_MULTIARRAY = ('numpy.core.multiarray', 'numpy._core.multiarray')  # numpy 1 / numpy 2 names


def _refuse(what: str) -> None:
    raise pickle.UnpicklingError(f'refused {what}')


def _short(obj: Any) -> str:
    text = repr(obj) if isinstance(obj, (str, bytes, int, float, bool, tuple, type(None))) \
        else f'a {type(obj).__name__}'
    return text if len(text) <= 60 else text[:57] + '...'


class _DType:
    """``numpy.dtype(name, align, copy)`` + its BUILD state, for the plain dtypes only."""

    def __new__(cls, *args: Any) -> _DType:
        if len(args) != 3 or args[0] not in PLAIN_DTYPES or args[1] is not False \
                or args[2] is not True:
            _refuse(f'numpy dtype {_short(args)}: only {"/".join(PLAIN_DTYPES)} are allowed')
        self = object.__new__(cls)
        self.name, self.dtype = args[0], None
        return self

    def __init__(self, *args: Any) -> None:  # all checks are in __new__
        pass

    def __setstate__(self, state: Any) -> None:
        if self.dtype is not None:
            _refuse('a second state for a numpy dtype')
        if not (type(state) is tuple and len(state) == 8 and state[0] == 3
                and state[1] in BYTE_ORDERS and state[2:5] == (None, None, None)
                and state[5:] == (-1, -1, 0)):
            _refuse(f'numpy dtype state {_short(state)}: only a plain numeric dtype\'s state '
                    '(no fields, sub-arrays, objects, sizes or flags) is allowed')
        self.dtype = np.dtype(PLAIN_DTYPES[self.name])

    def built(self) -> np.dtype:
        if self.dtype is None:
            _refuse(f'numpy dtype {self.name!r} used before its state')
        return self.dtype


class _Array:
    """The array ``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')`` creates,
    filled by its BUILD state; registered under ``numpy.ndarray``, which a file cannot call."""

    def __new__(cls, *args: Any) -> _Array:
        _refuse(f'numpy.ndarray{_short(args)}: arrays are only rebuilt from their pickled state')

    def __setstate__(self, state: Any) -> None:
        if getattr(self, 'array', None) is not None:
            _refuse('a second state for a numpy array')
        if not (type(state) is tuple and len(state) == 5 and state[0] == 1):
            _refuse(f'numpy array state {_short(state)}')
        _, shape, dtype, fortran, data = state
        if type(shape) is not tuple or not all(type(n) is int and n >= 0 for n in shape):
            _refuse(f'numpy array shape {_short(shape)}')
        if type(dtype) is not _DType:
            _refuse(f'numpy array dtype {_short(dtype)}')
        if fortran is not False:
            _refuse('a Fortran-ordered numpy array (only C-contiguous arrays are allowed)')
        if type(data) not in (bytes, bytearray):
            _refuse(f'numpy array data of type {type(data).__name__} (bytes expected)')
        dtype = dtype.built()
        if math.prod(shape) * dtype.itemsize != len(data):
            _refuse(f'numpy array data of {len(data)} bytes for shape {shape} of {dtype}')
        self.array = np.frombuffer(bytes(data), dtype=dtype).reshape(shape).copy()

    def built(self) -> np.ndarray:
        if getattr(self, 'array', None) is None:
            _refuse('a numpy array without its state')
        return self.array


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _Array:
    if cls is not _Array or shape != (0,) or typecode != b'b':
        _refuse(f'numpy _reconstruct of {_short(cls)}, {_short(shape)}, {_short(typecode)}')
    return object.__new__(_Array)


def _scalar(dtype: Any, data: Any = None) -> np.generic:
    if type(dtype) is not _DType or type(data) not in (bytes, bytearray):
        _refuse(f'numpy scalar of {_short(dtype)} from {_short(data)}')
    dtype = dtype.built()
    if len(data) != dtype.itemsize:
        _refuse(f'numpy scalar of {len(data)} bytes for {dtype}')
    return np.frombuffer(bytes(data), dtype=dtype)[0]


class _StatisticRef:
    """``getattr(HistoryBuffer, 'mean')``: the name of a default statistic method."""

    def __init__(self, name: str) -> None:
        self.name = name


def _getattr(*args: Any) -> _StatisticRef:
    """Stands in for ``builtins.getattr``: resolves only ``HistoryBuffer.<min|max|current|
    mean>`` (to a name) and refuses everything else (the ``getattr(getattr, '__self__')``
    route to ``eval``, any other object, attribute or number of arguments)."""
    if len(args) == 2 and args[0] is _HistoryBuffer and args[1] in HISTORY_BUFFER_METHODS:
        return _StatisticRef(args[1])
    shown = ', '.join('HistoryBuffer' if a is _HistoryBuffer else _short(a) for a in args)
    _refuse(f'getattr({shown}): a checkpoint may only reference '
            f'HistoryBuffer.{"/".join(HISTORY_BUFFER_METHODS)} this way')


class _HistoryBuffer:
    """A pickled ``HistoryBuffer``: its max length and two 1-D histories, nothing else."""

    def __new__(cls, *args: Any) -> _HistoryBuffer:
        if args:
            _refuse(f'HistoryBuffer{_short(args)}: only a pickled HistoryBuffer is allowed')
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        if hasattr(self, 'max_length'):
            _refuse('a second state for a HistoryBuffer')
        if type(state) is not dict or not HISTORY_KEYS <= set(state) \
                or not set(state) <= HISTORY_KEYS | {'statistics_methods'}:
            _refuse(f'HistoryBuffer state {_short(state)}: a dict of '
                    f'{sorted(HISTORY_KEYS)} (and statistics_methods) is expected')
        methods = state.get('statistics_methods', {})
        if type(methods) is not dict or not all(
                type(v) is _StatisticRef and v.name == k for k, v in methods.items()):
            _refuse('HistoryBuffer statistics_methods other than its default '
                    f'{"/".join(HISTORY_BUFFER_METHODS)}')
        length, logs, counts = (state[k] for k in ('max_length', '_log_history',
                                                   '_count_history'))
        if type(length) is not int or length < 1:
            _refuse(f'HistoryBuffer max_length {_short(length)}')
        if type(logs) is not _Array or type(counts) is not _Array:
            _refuse('HistoryBuffer histories that are not numpy arrays')
        logs, counts = logs.built(), counts.built()
        if logs.ndim != 1 or counts.shape != logs.shape:
            _refuse(f'HistoryBuffer histories of shapes {logs.shape} and {counts.shape}')
        self.max_length, self.logs, self.counts = length, logs, counts

    def build(self) -> Any:
        from mmengine.logging.history_buffer import HistoryBuffer
        if not hasattr(self, 'max_length'):
            _refuse('a HistoryBuffer without its state')
        return HistoryBuffer(self.logs, self.counts, self.max_length)


STAND_IN_TYPES = (_DType, _Array, _HistoryBuffer, _StatisticRef)


def stand_ins() -> list[tuple[Any, str]]:
    """(stand-in, pickled name) pairs for ``torch.serialization.safe_globals``."""
    pairs = [(_DType, 'numpy.dtype'), (_Array, 'numpy.ndarray'),
             (_HistoryBuffer, HISTORY_BUFFER), (_getattr, 'builtins.getattr')]
    for module in _MULTIARRAY:
        pairs += [(_reconstruct, f'{module}._reconstruct'), (_scalar, f'{module}.scalar')]
    return pairs


@contextlib.contextmanager
def checkpoint_globals() -> Iterator[None]:
    """Inside this block torch's ``weights_only`` allow-list is exactly :func:`stand_ins`;
    whatever the process had allow-listed (even the real numpy classes or ``getattr``) is set
    aside for the block and restored after it."""
    before = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        torch.serialization.add_safe_globals(stand_ins())
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def materialize(obj: Any) -> Any:
    """``obj`` with every stand-in replaced by the real object (numpy arrays, scalars and
    dtypes, ``HistoryBuffer``); lists and dicts are updated in place, tuples and sets
    rebuilt, tensors left as they are."""
    memo: dict[int, Any] = {}

    def walk(x: Any) -> Any:
        if isinstance(x, (torch.Tensor, str, bytes, int, float, bool, type(None))):
            return x
        if id(x) in memo:
            return memo[id(x)]
        kind = type(x)
        if kind is _Array:
            out = x.built()
        elif kind is _DType:
            out = x.built()
        elif kind is _HistoryBuffer:
            out = x.build()
        elif kind is _StatisticRef:
            from mmengine.logging.history_buffer import HistoryBuffer
            out = getattr(HistoryBuffer, x.name)
        elif isinstance(x, dict):
            memo[id(x)] = x
            if any(type(k) in STAND_IN_TYPES for k in x):
                _refuse('a numpy or HistoryBuffer object as a dict key')
            for key in list(x):
                x[key] = walk(x[key])
            return x
        elif kind is list:
            memo[id(x)] = x
            x[:] = [walk(v) for v in x]
            return x
        elif kind is tuple:
            out = tuple(walk(v) for v in x)
        elif kind in (set, frozenset):
            out = kind(walk(v) for v in x)
        else:
            return x
        memo[id(x)] = out
        return out

    return walk(obj)
