"""Plain-data stand-ins for the non-tensor globals of OpenMMLab Runner checkpoints.

mmengine Runner checkpoints hold, beside tensors and plain containers, the message hub's
``HistoryBuffer`` objects (numpy arrays of logged values, numpy scalars, numpy dtypes) and
``getattr(HistoryBuffer, 'mean')``-style references to its statistic methods. Allow-listing
the real classes for ``torch.load(weights_only=True)`` lets the file drive their
``__setstate__``: numpy's ``dtype.__setstate__`` accepts a state that gives a dtype an
object sub-array while it claims to hold no objects (8 file bytes then become a
``PyObject*``), and ``HistoryBuffer.__setstate__`` writes the file's statistic methods into a
class-level dict of the running process.

So none of them is allow-listed. Each pvt_mm load gets its own allow-list (never torch's
process-wide one: :mod:`pvt_mm.loading.weights_unpickler`) holding exactly the stand-ins below,
registered under the names those objects are pickled with; each accepts only plain data and
raises on anything else:

- ``numpy.dtype``: the plain numeric dtypes (bool, signed / unsigned integers, float16/32/64,
  complex64/128) in any byte order and fixed-width unicode (``np.str_``), built by name (no
  fields, sub-arrays, objects, metadata or flags); numpy <= 1.18's ``(name, 0, 1)`` arguments
  are the same as ``(name, False, True)``;
- ``numpy.core.multiarray._reconstruct`` + ``numpy.ndarray`` and the array state: a
  C-contiguous array of such a dtype whose byte count matches its shape (a read-only view of
  the file's bytes: no copy; bool bytes 0 / 1 only, unicode code points only);
- ``numpy.core.multiarray.scalar``: one such value;
- ``datetime`` values, ``pathlib`` paths, ``argparse.Namespace`` (:mod:`pvt_mm.loading.safe_plain`);
- ``mmengine...HistoryBuffer`` and ``builtins.getattr``: a buffer's max length and its two
  1-D histories; the statistic-method references resolve to names only.

:func:`materialize` then turns the stand-ins of a loaded object into real numpy arrays and
``HistoryBuffer`` objects built through their public constructors; the process's classes are
never touched by file data.
"""
from __future__ import annotations

import math
import pickle
import re
from typing import Any

import numpy as np
import torch

from .safe_plain import NamespaceRecord, plain_stand_ins
from .safe_plain import refuse as _refuse

__all__ = ['stand_ins', 'materialize', 'HISTORY_BUFFER_METHODS', 'PLAIN_DTYPES']

# plain numeric dtypes by the names numpy pickles them with; byte orders of their states
PLAIN_DTYPES = {'f8': np.float64, 'f4': np.float32, 'f2': np.float16, 'i8': np.int64,
                'i4': np.int32, 'i2': np.int16, 'i1': np.int8, 'u8': np.uint64,
                'u4': np.uint32, 'u2': np.uint16, 'u1': np.uint8, 'b1': np.bool_,
                'c8': np.complex64, 'c16': np.complex128}
BYTE_ORDERS = ('<', '|', '=', '>')
UNICODE = re.compile(r'U([1-9][0-9]{0,6})')  # np.str_ / unicode arrays: 'U<chars>'
MAX_CODE_POINT = 0x10FFFF
HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')
HISTORY_BUFFER = 'mmengine.logging.history_buffer.HistoryBuffer'
HISTORY_KEYS = {'max_length', '_log_history', '_count_history'}
_MULTIARRAY = ('numpy.core.multiarray', 'numpy._core.multiarray')  # numpy 1 / numpy 2 names


def _short(obj: Any) -> str:
    text = repr(obj) if isinstance(obj, (str, bytes, int, float, bool, tuple, type(None))) \
        else f'a {type(obj).__name__}'
    return text if len(text) <= 60 else text[:57] + '...'


class _DType:
    """``numpy.dtype(name, align, copy)`` + its BUILD state, for the plain dtypes only."""

    def __new__(cls, *args: Any) -> _DType:
        if len(args) != 3:
            _refuse(f'numpy dtype {_short(args)}: (name, align, copy) expected')
        name, align, copy = args
        if not (type(name) is str and (name in PLAIN_DTYPES or UNICODE.fullmatch(name))):
            _refuse(f'numpy dtype {_short(name)}: only plain numbers '
                    f'({"/".join(PLAIN_DTYPES)}) and unicode (U<n>) are allowed')
        if type(align) not in (bool, int) or align != 0 or type(copy) not in (bool, int) \
                or copy != 1:
            _refuse(f'numpy dtype arguments {_short(args)}: (name, False, True) expected')
        self = object.__new__(cls)
        self.name, self.dtype = name, None
        return self

    def __init__(self, *args: Any) -> None:  # all checks are in __new__
        pass

    def __setstate__(self, state: Any) -> None:
        if self.dtype is not None:
            _refuse('a second state for a numpy dtype')
        unicode = UNICODE.fullmatch(self.name)
        sizes = (4 * int(unicode[1]), 4, 8) if unicode else (-1, -1, 0)
        if not (type(state) is tuple and len(state) == 8 and state[0] == 3
                and state[1] in BYTE_ORDERS and state[2:5] == (None, None, None)
                and state[5:] == sizes):
            _refuse(f'numpy dtype state {_short(state)}: only a plain numeric or unicode '
                    'dtype\'s state (no fields, sub-arrays, objects, sizes or flags) is allowed')
        dtype = np.dtype(self.name if unicode else PLAIN_DTYPES[self.name])
        self.dtype = dtype.newbyteorder('>') if state[1] == '>' else dtype

    def built(self) -> np.dtype:
        if self.dtype is None:
            _refuse(f'numpy dtype {self.name!r} used before its state')
        return self.dtype


def _from_bytes(data: Any, dtype: np.dtype, count: int) -> np.ndarray:
    """``count`` values of ``dtype`` over ``data`` (no copy: read-only over bytes); bool bytes
    must be 0 / 1 and unicode code points valid (what numpy itself writes)."""
    if type(data) not in (bytes, bytearray):
        _refuse(f'numpy data of type {type(data).__name__} (bytes expected)')
    if count * dtype.itemsize != len(data):
        _refuse(f'numpy data of {len(data)} bytes for {count} values of {dtype}')
    values = np.frombuffer(data, dtype=dtype, count=count)
    raw = np.frombuffer(data, np.uint8)
    if dtype.kind == 'b' and raw.size and raw.max() > 1:
        _refuse('numpy bool data with bytes other than 0 and 1')
    if dtype.kind == 'U' and raw.size and \
            np.frombuffer(data, dtype.byteorder.replace('=', '<') + 'u4').max() > MAX_CODE_POINT:
        _refuse('numpy unicode data with invalid code points')
    return values


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
        self.array = _from_bytes(data, dtype.built(), math.prod(shape)).reshape(shape)

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
    value = _from_bytes(data, dtype, 1)[0]
    return np.str_(str(value)) if dtype.kind == 'U' else value.copy()


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


STAND_IN_TYPES = (_DType, _Array, _HistoryBuffer, _StatisticRef, NamespaceRecord)


def stand_ins() -> list[tuple[Any, str]]:
    """(stand-in, pickled name) pairs: the whole allow-list of one pvt_mm load."""
    pairs = [(_DType, 'numpy.dtype'), (_Array, 'numpy.ndarray'),
             (_HistoryBuffer, HISTORY_BUFFER), (_getattr, 'builtins.getattr')]
    for module in _MULTIARRAY:
        pairs += [(_reconstruct, f'{module}._reconstruct'), (_scalar, f'{module}.scalar')]
    return pairs + plain_stand_ins()


def materialize(obj: Any) -> Any:
    """``obj`` with every stand-in replaced by the real object (numpy arrays, scalars and
    dtypes, ``HistoryBuffer``, ``argparse.Namespace``): in dict keys and values (keys rebuilt;
    an unhashable one is refused), list items, tuple / set members and the attributes of
    objects that carry them (``OrderedDict._metadata``, tensors' and parameters' ``__dict__``);
    dicts and lists are updated in place, tuples and sets rebuilt."""
    memo: dict[int, Any] = {}

    def attributes(x: Any) -> None:
        state = getattr(x, '__dict__', None)
        if type(state) is dict and state:
            for key in list(state):
                state[key] = walk(state[key])

    def walk(x: Any) -> Any:
        if isinstance(x, (str, bytes, int, float, bool, type(None))):
            return x
        if id(x) in memo:
            return memo[id(x)]
        kind = type(x)
        if isinstance(x, torch.Tensor):
            memo[id(x)] = x
            attributes(x)
            return x
        if kind in (_Array, _DType):
            out = x.built()
        elif kind is _HistoryBuffer:
            out = x.build()
        elif kind is NamespaceRecord:
            out = x.build(walk)
        elif kind is _StatisticRef:
            from mmengine.logging.history_buffer import HistoryBuffer
            out = getattr(HistoryBuffer, x.name)
        elif isinstance(x, dict):
            memo[id(x)] = x
            items = [(walk(k), walk(v)) for k, v in x.items()]
            x.clear()
            for key, value in items:
                try:
                    x[key] = value
                except TypeError:
                    _refuse(f'an unhashable dict key ({type(key).__name__})')
            attributes(x)
            return x
        elif kind is list:
            memo[id(x)] = x
            x[:] = [walk(v) for v in x]
            return x
        elif kind is tuple:
            out = tuple(walk(v) for v in x)
        elif kind in (set, frozenset):
            try:
                out = kind(walk(v) for v in x)
            except TypeError:
                _refuse('an unhashable set member')
        else:
            return x
        memo[id(x)] = out
        return out

    return walk(obj)
