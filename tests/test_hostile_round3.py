"""Loading, round 3 (issue 30): no hang, no silent wrong weight, nothing visible to other
threads, and the plain data real tools write loads.

Where a hang, crash or memory blow-up is possible the load runs in a subprocess with a time
cap (``timeout``) and an address-space cap (``RLIMIT_AS``); each protection's test fails
without it (the meta-tests show the file is live when the check is switched off)."""
from __future__ import annotations

import argparse
import datetime as dt
import pathlib
import subprocess
import threading
import time
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.registry import MODELS

from payloads import _Reduce, capped, legacy_pickle, numpy_array, numpy_dtype, zip_bomb
from pvt_mm.loading.checkpoint import publish_checkpoint, read_checkpoint
from pvt_mm.loading.convert import CheckpointError, convert_pvt_checkpoint
from pvt_mm.engine.checkpoint_io import check_model_checkpoint
from pvt_mm.models.backbones import PVTv2

ROOT = Path(__file__).resolve().parents[1]


def _b0_state() -> dict:
    return PVTv2(arch='b0').state_dict()


# ---- 1. zip bombs: refused from the central directory, nothing decompressed ------------------
LOAD_EVERY_WAY = """
import sys, time
import pvt_mm
from mmengine.registry import MODELS
from mmengine.runner.checkpoint import _load_checkpoint
from pvt_mm.loading.checkpoint import read_checkpoint
path = sys.argv[1]
for name, load in (('read_checkpoint', lambda: read_checkpoint(path)),
                   ('mmengine', lambda: _load_checkpoint(path)),
                   ('init_cfg', lambda: MODELS.build(dict(type='PVTv2', arch='b0', init_cfg=dict(
                       type='Pretrained', checkpoint=path))).init_weights())):
    start = time.time()
    try:
        load()
        print(name, 'LOADED')
    except Exception as e:
        print(name, f'{time.time() - start:.1f}s', type(e).__name__, str(e).splitlines()[0])
"""


@pytest.fixture(scope='module')
def bomb(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp('bomb')
    torch.save({'state_dict': {'w': torch.ones(3)}}, folder / 'base.pth')
    return zip_bomb(folder / 'base.pth', folder / 'bomb.pth', copies=8000)  # 512 GiB inflated


def test_zip_bomb_is_refused_at_once_on_every_path(bomb):
    proc = capped(['-c', LOAD_EVERY_WAY, bomb])
    lines = [ln for ln in proc.stdout.splitlines()
             if ln.split(' ')[0] in ('read_checkpoint', 'mmengine', 'init_cfg')]
    assert proc.returncode == 0 and len(lines) == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    for line in lines:
        name, seconds, error, *message = line.split(' ', 3)
        assert error == 'CheckpointError' and float(seconds[:-1]) < 5, line
        assert 'compressed record' in message[0] and str(bomb) in message[0], line


def test_zip_bomb_hangs_the_crc_check_without_the_layout_check(bomb):
    """Meta-test: the CRC check alone (what ran before) inflates the record once per listing."""
    with pytest.raises(subprocess.TimeoutExpired):
        capped(['-c', f'import zipfile; zipfile.ZipFile({str(bomb)!r}).testzip()'], timeout=8)


def _restore(src: Path, dst: Path, directory_edit) -> Path:
    """``src`` with its central directory's entries rewritten by ``directory_edit``."""
    import struct
    data = src.read_bytes()
    end = data.rindex(b'PK\x05\x06')
    count, size, offset = struct.unpack('<10xHII2x', data[end:end + 22])
    entries = directory_edit(data[offset:offset + size])
    n = entries.count(b'PK\x01\x02')
    dst.write_bytes(data[:offset] + entries + struct.pack('<4sHHHHIIH', b'PK\x05\x06', 0, 0, n,
                                                         n, len(entries), offset, 0))
    return dst


def test_duplicate_names_and_overlapping_records_are_refused(tmp_path):
    torch.save({'w': torch.arange(64.)}, tmp_path / 'base.pth')
    first = lambda d: d[:d.index(b'PK\x01\x02', 4)]  # noqa: E731
    dup = _restore(tmp_path / 'base.pth', tmp_path / 'dup.pth', lambda d: d + first(d) * 50)
    with pytest.raises(CheckpointError, match=r'dup\.pth .*is listed more than once'):
        read_checkpoint(dup)

    def stretch(d: bytes) -> bytes:  # the first record claims the bytes of those after it
        out = bytearray(d)
        out[20:28] = (1 << 20).to_bytes(4, 'little') * 2  # compressed / uncompressed size
        return bytes(out)
    with pytest.raises(CheckpointError, match=r'overlaps the next record'):
        read_checkpoint(_restore(tmp_path / 'base.pth', tmp_path / 'over.pth', stretch))


# ---- 2. tensors without data -------------------------------------------------------------
HOLLOW = {'meta': lambda t: torch.empty(t.shape, device='meta'),
          'sparse': lambda t: t.to_sparse(),
          'quantized': lambda t: torch.quantize_per_tensor(t, 0.1, 0, torch.qint8)}
KEY = 'stages.0.blocks.0.attn.q.weight'


@pytest.mark.parametrize('kind', sorted(HOLLOW))
def test_hollow_tensors_are_named_on_every_path(kind, tmp_path):
    sd = _b0_state()
    sd[KEY] = HOLLOW[kind](sd[KEY])
    path = tmp_path / f'{kind}.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in sd.items()}}, path)
    checkpoint = read_checkpoint(path)
    model = torch.nn.Module()
    model.backbone = PVTv2(arch='b0')
    for strict in (True, False):  # tools/test.py, tools/infer.py, --resume, load_from
        with pytest.raises(CheckpointError, match=rf'backbone\.{KEY} is a .*{kind}'):
            check_model_checkpoint(model, checkpoint, path, strict)
    with pytest.raises(CheckpointError, match=rf'{KEY} is a .*{kind}'):  # Pretrained
        MODELS.build(dict(type='PVTv2', arch='b0', init_cfg=dict(
            type='Pretrained', checkpoint=str(path), prefix='backbone.'))).init_weights()
    with pytest.raises(CheckpointError, match=rf'{KEY} is a .*{kind}'):  # the converter
        convert_pvt_checkpoint(checkpoint, prefix='backbone.')


# ---- 3. another thread's torch.load never sees pvt_mm's allow-list -------------------------
class Registered:
    """A class someone else allow-listed process-wide."""


def _race(tmp_path: Path, seconds: float = 3) -> tuple[list[str], set]:
    """pvt_mm loads in this thread while another thread loads its own numpy file with
    ``weights_only=True`` and its own ``safe_globals``; returns (what went wrong in either
    thread, the types the other thread received)."""
    import pvt_mm.loading.safe_pickle as safe_pickle
    theirs_file, ours_file = tmp_path / 'theirs.pth', tmp_path / 'ours.pth'
    torch.save({'a': np.arange(3.)}, theirs_file)
    torch.save({'meta': {'x': np.arange(3.), 'when': dt.date(2024, 1, 1)},
                'state_dict': {'w': torch.ones(2)}}, ours_file)
    multiarray = (getattr(np, '_core', None) or np.core).multiarray
    theirs = [multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype('f8'))]
    ours = {id(obj) for obj, _ in safe_pickle.stand_ins()}
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([Registered])
    stop, seen, problems = threading.Event(), set(), []

    def other() -> None:
        while not stop.is_set():
            with torch.serialization.safe_globals(theirs):
                allowed = torch.serialization.get_safe_globals()
                if Registered not in allowed or any(id(g) in ours for g in allowed):
                    problems.append('the allow-list changed under this thread')
                try:
                    seen.add(type(torch.load(theirs_file, weights_only=True)['a']))
                except Exception as e:  # noqa: BLE001
                    problems.append(repr(e)[:200])
    thread = threading.Thread(target=other)
    thread.start()
    try:
        end = time.time() + seconds
        while time.time() < end:
            try:
                if not isinstance(read_checkpoint(ours_file)['meta']['x'], np.ndarray):
                    problems.append('pvt_mm load gave no array')
            except CheckpointError as e:  # its own allow-list changed under it
                problems.append(f'pvt_mm load failed: {str(e)[-100:]}')
    finally:
        stop.set()
        thread.join()
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)
    return problems, seen


def test_other_threads_never_see_pvt_mm_stand_ins(tmp_path):
    problems, seen = _race(tmp_path)
    assert not problems, problems[:3]
    assert seen == {np.ndarray}


def test_the_race_is_seen_with_a_process_wide_swap(tmp_path, monkeypatch):
    """Meta-test: loading as pvt_mm did before (torch's allow-list swapped for the stand-ins
    during each load) shows up in the other thread."""
    import pvt_mm.loading.checkpoint as checkpoint

    def swapping_load(path, allowed, map_location='cpu'):
        saved = torch.serialization.get_safe_globals()
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals([(obj, name) for name, obj in allowed.items()])
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        finally:
            torch.serialization.clear_safe_globals()
            torch.serialization.add_safe_globals(saved)
    monkeypatch.setattr(checkpoint, 'load_weights_only', swapping_load)
    problems, _ = _race(tmp_path)
    assert problems


# ---- 5. the plain data real tools write ----------------------------------------------------
LEGITIMATE = {
    'datetime': dt.datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    'date/time/timedelta': (dt.date(2024, 2, 29), dt.time(23, 59), dt.timedelta(1, 2, 3)),
    'pathlib': (pathlib.Path('/data/coco'), pathlib.PureWindowsPath('C:/data')),
    'timm args': argparse.Namespace(model='pvt_v2_b0', lr=1e-3, sched='cosine', aa=None),
    'empty array': np.zeros((0, 3)),
    'np.str_': np.str_('pvt'),
    'float16 scalar': np.float16(1.5),
    'uint8 palette': np.array([[128, 64, 128], [0, 0, 255]], np.uint8),
    'unicode array': np.array(['car', 'person']),
    'big-endian': np.arange(3, dtype='>i4'),
}


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return type(b) is np.ndarray and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize('name', sorted(LEGITIMATE))
def test_plain_data_loads_as_itself(name, tmp_path):
    torch.save({'meta': {'value': LEGITIMATE[name]}, 'state_dict': {'w': torch.ones(1)}},
               tmp_path / 'ckpt.pth')
    assert _same(LEGITIMATE[name], read_checkpoint(tmp_path / 'ckpt.pth')['meta']['value'])


def test_numpy_1_18_dtype_arguments_load(tmp_path):
    data = np.arange(3.).tobytes()
    torch.save({'a': numpy_array(numpy_dtype('f8', 0, 1), (3,), data)}, tmp_path / 'old.pth')
    assert np.array_equal(read_checkpoint(tmp_path / 'old.pth')['a'], np.arange(3.))


CODE_OR_NONSENSE = {
    'object dtype': numpy_dtype('O8'),
    'dtype align 2': numpy_dtype('f8', 2, 1),
    'datetime of 3 bytes': _Reduce(dt.datetime, (b'abc',)),
    'path of numbers': _Reduce(pathlib.PosixPath, (1, 2)),
    'bytes(n)': _Reduce(bytes, (10 ** 12,)),
    'bytearray(n)': _Reduce(bytearray, (1 << 40,)),
    'bool byte 2': numpy_array(numpy_dtype('b1', order='|'), (2,), b'\x00\x02'),
}


REFUSE_EACH = """
import sys
from pvt_mm.loading.checkpoint import read_checkpoint
for path in sys.argv[1:]:
    try:
        read_checkpoint(path)
        print(path, 'LOADED')
    except Exception as e:
        print(type(e).__name__, str(e).replace(chr(10), ' | '))
"""


def test_code_and_nonsense_stay_refused(tmp_path):
    paths = []
    for i, (name, record) in enumerate(sorted(CODE_OR_NONSENSE.items())):
        paths.append(tmp_path / f'bad{i}.pth')
        torch.save({'meta': {'x': record}}, paths[-1])
    proc = capped(['-c', REFUSE_EACH, *paths])
    lines = [ln for ln in proc.stdout.splitlines() if 'bad' in ln]
    assert len(lines) == len(paths), proc.stdout + proc.stderr[-2000:]
    for path, line in zip(paths, lines):
        assert line.startswith(f'CheckpointError {path} ') and 'refused' in line, line
        assert '|' not in line, line  # one line


class _NamespaceRecord(_Reduce):
    @property
    def __class__(self):  # noqa: D105  pickle checks __newobj__'s class
        return argparse.Namespace


def test_namespace_state_must_be_names(tmp_path):
    import copyreg
    record = _NamespaceRecord(copyreg.__newobj__, (argparse.Namespace,), {1: 'x'})
    torch.save({'args': record}, tmp_path / 'ns.pth')
    with pytest.raises(CheckpointError, match='argparse.Namespace state'):
        read_checkpoint(tmp_path / 'ns.pth')


# ---- 6. names --------------------------------------------------------------------------
TRAINING = {'meta': {'epoch': 1}, 'state_dict': {'w': torch.ones(2)},
            'optimizer': {'state': {}}}


@pytest.mark.parametrize('name', ['run-0123abcd.pth', 'model-a1b2c3d4e.pth',
                                  'exp-20240101a.pth', 'weights-20240101.pth'])
def test_intact_files_are_never_refused_for_their_name(name, tmp_path):
    for content in (TRAINING, TRAINING['state_dict']):
        torch.save(content, tmp_path / name)
        read_checkpoint(tmp_path / name)


def test_published_files_are_checked_also_through_a_plain_link(tmp_path):
    torch.save({'meta': {}, 'state_dict': {'w': torch.ones(2)}}, tmp_path / 'src.pth')
    published = publish_checkpoint(tmp_path / 'src.pth', tmp_path / 'det.pth')
    assert read_checkpoint(published)['state_dict']['w'].sum() == 2
    forged = tmp_path / 'det-0123abcd.pth'
    torch.save({'meta': {}, 'state_dict': {'w': torch.zeros(2)}}, forged)
    (tmp_path / 'latest.pth').symlink_to(forged)
    for path in (forged, tmp_path / 'latest.pth'):
        with pytest.raises(CheckpointError, match='is damaged or renamed: it is a published'):
            read_checkpoint(path)


# ---- 7. memory ------------------------------------------------------------------------------
PEAK = """
import sys
from pvt_mm.loading.checkpoint import read_checkpoint


def status(key):
    line = next(ln for ln in open('/proc/self/status') if ln.startswith(key))
    return int(line.split()[1]) * 1024


open('/proc/self/clear_refs', 'w').write('5')  # the peak (VmHWM) starts again from here
before = status('VmRSS:')
array = read_checkpoint(sys.argv[1])['meta']['array']
print((status('VmHWM:') - before) / array.nbytes)
"""


def test_array_bytes_are_not_copied_twice(tmp_path):
    array = np.full(32 << 20, 7, np.int64)  # 256 MiB of bytes < 0x80 (one pickle byte each)
    torch.save({'meta': {'array': array}}, tmp_path / 'big.pth')
    del array
    proc = capped(['-c', PEAK, tmp_path / 'big.pth'])
    assert proc.returncode == 0, proc.stderr[-2000:]
    # torch's pickle record, its text and its bytes: 3.0x the array; one more copy (what
    # the stand-in did before): 4.0x
    assert float(proc.stdout) < 3.5, proc.stdout


def test_legacy_pickles_declare_only_what_they_hold(tmp_path):
    assert read_checkpoint(legacy_pickle(tmp_path / 'ok.pth'))['w'].tolist() == [0, 1, 2, 3]
    with pytest.raises(CheckpointError, match='declares tensors of 1099511627776 bytes'):
        read_checkpoint(legacy_pickle(tmp_path / 'huge.pth', declared=1 << 38))
    with pytest.raises(CheckpointError, match="storage '0' of this legacy checkpoint has no data"):
        read_checkpoint(legacy_pickle(tmp_path / 'hole.pth', keys=[]))


def test_materialize_reaches_keys_metadata_and_attributes(tmp_path):
    """numpy dtypes and arrays (stand-ins while unpickling) inside tuple dict keys, an
    OrderedDict's ``_metadata`` and a parameter's attributes come back as numpy objects."""
    state = OrderedDict(w=torch.ones(2))
    state._metadata = {'': {'version': 2, 'dtype': np.dtype('f4')}}
    param = torch.nn.Parameter(torch.ones(2))
    param.scales = np.arange(2.)
    torch.save({'state_dict': state, 'table': {(np.dtype('i8'), 'a'): np.arange(2)},
                'param': param}, tmp_path / 'deep.pth')
    out = read_checkpoint(tmp_path / 'deep.pth')
    assert out['state_dict']._metadata['']['dtype'] == np.float32
    (key, value), = out['table'].items()
    assert type(key[0]) is type(np.dtype('i8')) and type(value) is np.ndarray
    assert type(out['param'].scales) is np.ndarray


def test_loads_work_when_torch_forces_weights_only(tmp_path, monkeypatch):
    """``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` makes ``torch.load`` refuse an explicit pickle
    module: pvt_mm's per-load unpickler still runs (zip and legacy files), refusals included."""
    monkeypatch.setenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '1')
    torch.save({'meta': {'args': argparse.Namespace(lr=0.1)}, 'state_dict': {'w': torch.ones(1)}},
               tmp_path / 'zip.pth')
    assert read_checkpoint(tmp_path / 'zip.pth')['meta']['args'].lr == 0.1
    assert read_checkpoint(legacy_pickle(tmp_path / 'old.pth'))['w'].tolist() == [0, 1, 2, 3]
    with pytest.raises(CheckpointError, match='declares tensors'):
        read_checkpoint(legacy_pickle(tmp_path / 'huge.pth', declared=1 << 38))
