"""One ``weights_only`` load with an allow-list of its own, invisible to the rest of the process.

torch's ``weights_only`` unpickler reads its user allow-list from one process-wide set
(``torch.serialization.add_safe_globals`` / ``safe_globals``): swapping that set for a load
would show pvt_mm's stand-ins to every other thread's ``torch.load`` meanwhile, and hide
torch's own registrations (DTensor, NJT) from them. So the set is never touched. Each load
gets its own pickle module (:func:`weights_only_module`): torch's ``weights_only``
``Unpickler`` (its opcode rules unchanged), whose allow-list lookups answer from this load's
names only, handed to ``torch.load(pickle_module=...)``. Per load it also:

- bounds what the file declares: the bytes of all its storages together may not exceed the
  file's own size (checked before torch allocates them), and ``bytearray(n)`` from torch's
  default list is replaced by a stand-in that copies file bytes only;
- refuses a legacy (non-zip) pickle that uses a storage its storage-key list does not fill
  (torch would hand out uninitialised memory as weights).
"""
from __future__ import annotations

import os
import pickle
import types
from pathlib import Path
from typing import Any

import torch
import torch._weights_only_unpickler as _wo

from .safe_plain import refuse as _refuse

__all__ = ['weights_only_module', 'load_weights_only', 'allowed_names', 'DeclaredDataError']

_LOAD = _wo.Unpickler.load
_LOOKUPS = ('_get_allowed_globals', '_get_user_allowed_globals')


class DeclaredDataError(pickle.UnpicklingError):
    """The file declares data it does not hold (sizes beyond the file, missing storages)."""


def allowed_names(pairs: list[Any]) -> dict[str, Any]:
    """``[obj or (obj, 'module.name')]`` (``add_safe_globals``'s form) -> ``{name: obj}``."""
    names: dict[str, Any] = {}
    for item in pairs:
        obj, name = item if isinstance(item, tuple) else (
            item, f'{item.__module__}.{item.__qualname__}')
        names[name] = obj
    return names


def _bytearray(*args: Any) -> bytearray:
    """``bytearray`` as protocol 2 pickles it (``bytearray(text, 'latin-1')`` or of bytes):
    a copy of file bytes, never ``bytearray(n)`` (n zero bytes, any n)."""
    if not args:
        return bytearray()
    if len(args) == 1 and type(args[0]) in (bytes, bytearray):
        return bytearray(args[0])
    if len(args) == 2 and type(args[0]) is str and args[1] in ('latin-1', 'latin1'):
        return bytearray(args[0], 'latin-1')
    _refuse(f'bytearray of {", ".join(type(a).__name__ for a in args)}: only a copy of '
            'bytes stored in the file is allowed')


class _Budget:
    """What one load's file may declare: storages of at most ``limit`` bytes in all, and
    (legacy pickles) every storage it uses filled from its key list."""

    def __init__(self, limit: int) -> None:
        self.limit, self.total = limit, 0
        self.keys: dict[str, int] = {}
        self.main_done = False

    def persistent(self, torch_load: Any) -> Any:
        def persistent_load(saved_id: Any) -> Any:
            if type(saved_id) is tuple and len(saved_id) >= 5:
                storage_type, key, numel = saved_id[1], saved_id[2], saved_id[4]
                if type(numel) is not int or numel < 0:
                    raise DeclaredDataError(f'a storage of {str(numel)[:20]} elements')
                size = 1 if storage_type is torch.UntypedStorage else \
                    torch._utils._element_size(getattr(storage_type, 'dtype', torch.uint8))
                if str(key) not in self.keys:
                    self.keys[str(key)] = numel * size
                    self.total += numel * size
                    if self.total > self.limit:
                        raise DeclaredDataError(
                            f'it declares tensors of {self.total} bytes in a file of '
                            f'{self.limit} bytes (refused before allocating them)')
            return torch_load(saved_id)
        return persistent_load

    def check_keys(self, keys: Any) -> None:
        """Legacy pickles: the storage keys whose bytes follow the pickle."""
        filled = {str(k) for k in keys} if isinstance(keys, (list, tuple)) else set()
        missing = [k for k in self.keys if k not in filled]
        if missing:
            raise DeclaredDataError(f'storage {missing[0]!r} of this legacy checkpoint has no '
                                    'data in the file (its tensors would be uninitialised '
                                    'memory)')


def weights_only_module(allowed: dict[str, Any], limit: int) -> types.SimpleNamespace:
    """A pickle module for ``torch.load(pickle_module=...)``: torch's ``weights_only``
    unpickler answering from ``allowed`` (plus torch's own default list, with
    :func:`_bytearray`) only, bounded by ``limit`` bytes of storages (:class:`_Budget`)."""
    if _LOAD.__code__.co_freevars or not set(_LOOKUPS) <= set(_LOAD.__code__.co_names):
        raise RuntimeError(f'torch {torch.__version__}: its weights_only unpickler has '
                           'changed; pvt_mm cannot give a load its own allow-list')
    defaults = {**_wo._get_allowed_globals(), 'builtins.bytearray': _bytearray}
    user = dict(allowed)
    scope = dict(vars(_wo), _get_allowed_globals=lambda: defaults,
                 _get_user_allowed_globals=lambda: user)
    load = types.FunctionType(_LOAD.__code__, scope, 'load')
    budget = _Budget(limit)

    class Unpickler(_wo.Unpickler):
        def load(self) -> Any:
            result = load(self)
            budget.main_done = True
            return result

        @property
        def persistent_load(self) -> Any:
            return self.__dict__.get('_persistent_load', _wo.Unpickler.persistent_load
                                     .__get__(self))

        @persistent_load.setter
        def persistent_load(self, fn: Any) -> None:
            self.__dict__['_persistent_load'] = budget.persistent(fn)

    def module_load(file: Any, *, encoding: str = 'ASCII') -> Any:
        result = load(Unpickler(file, encoding=encoding))  # not the method: no main_done
        if budget.main_done:  # legacy pickles: the storage keys come after the object
            budget.check_keys(result)
        return result

    return types.SimpleNamespace(Unpickler=Unpickler, load=module_load,
                                 UnpicklingError=pickle.UnpicklingError,
                                 __name__='pvt_mm_weights_only')


def load_weights_only(path: str | os.PathLike, allowed: dict[str, Any],
                      map_location: Any = 'cpu') -> Any:
    """``torch.load`` of ``path`` through :func:`weights_only_module` (``allowed`` for this
    load only). The caller has refused TorchScript archives and tar files, which
    ``torch.load`` would hand to other loaders. Under ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` (which
    makes ``torch.load`` refuse any ``pickle_module``) torch's two readers are called
    directly, with the same module."""
    module = weights_only_module(allowed, Path(path).stat().st_size)
    if os.getenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '0').lower() not in ('1', 'y', 'yes', 'true'):
        return torch.load(path, map_location=map_location, pickle_module=module,
                          weights_only=False, mmap=False)
    serialization = torch.serialization
    with open(path, 'rb') as f:
        if serialization._is_zipfile(f):
            with serialization._open_zipfile_reader(f) as archive:
                return serialization._load(archive, map_location, module, encoding='utf-8')
        return serialization._legacy_load(f, map_location, module, encoding='utf-8')
