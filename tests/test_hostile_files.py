"""Loading, round 2 (issue 17): no file can crash or corrupt the process, damaged files are
caught, every failure names the file, and mmdet's / mmseg's own APIs load our checkpoints.

Each protection has a meta-test showing the file is live without it (the old allow-list of
real numpy / HistoryBuffer / getattr, the zip CRC check or the safetensors digest switched
off, mmengine's own local loader, a non-strict inferencer)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from mmengine.logging.history_buffer import HistoryBuffer

import numpy as np
from payloads import (OLD_ALLOW_LIST, flip_inside_a_tensor_record, forged_object_array,
                      history_buffer, history_buffer_method, plain_payload, plant,
                      run_options)
from pvt_mm.loading.checkpoint import read_checkpoint
from pvt_mm.loading.convert import CheckpointError
from pvt_mm.demo import DemoDataSpec, make_demo_data
from pvt_mm.demo.pipeline import DATA_ENV
from pvt_mm.engine import cli  # module import: pytest would collect cli.test_main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
import infer  # noqa: E402  tools/infer.py
import convert_checkpoint  # noqa: E402  tools/convert_checkpoint.py
import publish_model  # noqa: E402  tools/publish_model.py

ATSS = str(ROOT / 'configs/demo/atss_pvtv2-b0_fpn_demo.py')
SEG = str(ROOT / 'configs/demo/fpn_pvtv2-b0_demo-seg.py')
TINY = DemoDataSpec(num_train=4, num_val=2)
CRASH = 0x4141414141414141  # a non-canonical address: dereferencing it is a SIGSEGV


def _seg_options() -> list[str]:
    opts = {'experiment_name': f'hostile_{uuid.uuid4().hex[:8]}',
            'train_dataloader.batch_size': 2, 'train_dataloader.num_workers': 0,
            'train_dataloader.persistent_workers': False, 'train_cfg.max_iters': 1,
            'default_hooks.checkpoint.interval': 1, 'val_cfg': None, 'val_dataloader': None,
            'val_evaluator': None}
    return ['--cfg-options'] + [f'{k}={v}' for k, v in opts.items()]


@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> dict[str, Path]:
    """One iteration each of the demo ATSS and Semantic FPN with tools/train.py."""
    root = make_demo_data(tmp_path_factory.mktemp('hostile_data'), TINY)
    det, seg = tmp_path_factory.mktemp('det'), tmp_path_factory.mktemp('seg')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DATA_ENV, str(root))
        cli.train_main([ATSS, '--work-dir', str(det), *run_options()])
        cli.train_main([SEG, '--work-dir', str(seg), *_seg_options()])
        yield {'det': det / 'epoch_1.pth', 'seg': seg / 'iter_1.pth', 'det_dir': det,
               'image': root / 'coco' / 'val' / sorted(os.listdir(root / 'coco' / 'val'))[0]}


def _run(args: list[str], data: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **({DATA_ENV: str(data)} if data else {}))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)


# ---- 1. numpy's dtype state cannot forge an object pointer ---------------------------------
EVERY_LOAD_PATH = """
import sys
sys.path[:0] = ['tests', 'tools']
from pvt_mm.engine import cli
from payloads import run_options
import convert_checkpoint, infer
from mmengine.registry import MODELS
path, work, image, atss = sys.argv[1:5]
loads = {
    'backbone_init_cfg': lambda: MODELS.build(dict(type='PVTv2', arch='b0', init_cfg=dict(
        type='Pretrained', checkpoint=path))).init_weights(),
    'convert_tool': lambda: convert_checkpoint.main([path, work + '/out.pth']),
    'load_from': lambda: cli.train_main([atss, '--work-dir', work, *run_options(
        load_from=path)]),
    'resume': lambda: cli.train_main([atss, '--work-dir', work, '--resume', path,
                                      *run_options()]),
    'test_tool': lambda: cli.test_main([atss, path, '--work-dir', work, *run_options()]),
    'infer_tool': lambda: infer.main([image, atss, path, '--out-dir', work])}
for name, load in loads.items():
    try:
        load()
        print('RESULT', name, 'LOADED')
    except (Exception, SystemExit) as e:
        print('RESULT', name, type(e).__name__, str(e).splitlines()[0] if str(e) else '', flush=True)
"""
LOAD_PATHS = ('backbone_init_cfg', 'convert_tool', 'load_from', 'resume', 'test_tool',
              'infer_tool')


def test_forged_object_array_is_refused_on_every_load_path(runs, tmp_path):
    """Every load path in one subprocess (a crash, SIGSEGV, is a failure, not an error): each
    refuses the file naming it, and never advises ``weights_only=False``; tools/infer.py's
    command line prints that one line."""
    path = plant(runs['det'], tmp_path / 'forged.pth', seed=forged_object_array(CRASH))
    data = runs['image'].parents[2]
    proc = _run(['-c', EVERY_LOAD_PATH, str(path), str(tmp_path / 'work'), str(runs['image']),
                 ATSS], data=data)
    assert proc.returncode == 0, f'exit {proc.returncode}\n{proc.stderr[-2000:]}'
    results = dict(line.split(' ', 2)[1:] for line in proc.stdout.splitlines()
                   if line.startswith('RESULT '))
    assert set(results) == set(LOAD_PATHS), proc.stdout[-2000:]
    for load, result in results.items():
        assert str(path) in result and 'refused numpy dtype' in result, (load, result)
        assert 'weights_only=False' not in result
    cli_run = _run(['tools/infer.py', str(runs['image']), ATSS, str(path), '--out-dir',
                    str(tmp_path / 'cli')], data=data)
    assert cli_run.returncode > 0 and 'weights_only=False' not in cli_run.stderr
    last = cli_run.stderr.strip().splitlines()[-1]
    assert last.startswith('CheckpointError: ') and str(path) in last, cli_run.stderr[-2000:]


FORGE = '''
import sys, torch
sys.path.insert(0, 'tests')
from payloads import OLD_ALLOW_LIST, forged_object_array
target = ('a live object of this process',)
pointer = id(target) if sys.argv[1] == 'live' else {crash}
torch.save({{'meta': {{'seed': forged_object_array(pointer)}}}}, sys.argv[2])
with torch.serialization.safe_globals(OLD_ALLOW_LIST()):
    loaded = torch.load(sys.argv[2], weights_only=True)
print('FORGED' if next(iter(loaded['meta']['seed'])) is target else 'no')
'''.format(crash=CRASH)


def test_forged_object_array_is_live_without_the_protection(tmp_path):
    """Meta-check: under the old allow-list the file hands back a live object of the
    process at the address it names, or crashes the process."""
    live = _run(['-c', FORGE, 'live', str(tmp_path / 'live.pth')])
    assert live.stdout.strip() == 'FORGED', live.stderr[-2000:]
    crash = _run(['-c', FORGE, 'crash', str(tmp_path / 'crash.pth')])
    assert crash.returncode < 0, crash.stderr[-2000:]  # killed by a signal (SIGSEGV)


# ---- 2. a refused load leaves no trace -------------------------------------------------------
def _history_state(**extra) -> dict:
    return {'max_length': 10, '_log_history': np.array([1.0, 2.0]),
            '_count_history': np.array([1, 1]), **extra}


def test_a_refused_file_leaves_history_buffer_untouched(runs, tmp_path):
    methods = dict(HistoryBuffer._statistics_methods)
    remap = {'mean': history_buffer_method(HistoryBuffer, 'max')}  # mean -> max, silently
    path = tmp_path / 'remap.pth'
    torch.save({'meta': {'hub': history_buffer(_history_state(statistics_methods=remap))}},
               path)
    plain = plain_payload(tmp_path / 'later_refused.pth', tmp_path / 'ran')
    for bad in (path, plain):
        with pytest.raises(CheckpointError, match=str(bad)):
            read_checkpoint(bad)
        assert HistoryBuffer._statistics_methods == methods
    # meta-check: the old allow-list runs HistoryBuffer.__setstate__ on the file's data
    try:
        with torch.serialization.safe_globals(OLD_ALLOW_LIST()):
            torch.load(path, weights_only=True)
        assert HistoryBuffer._statistics_methods['mean'] is HistoryBuffer.max
    finally:
        HistoryBuffer._statistics_methods.clear()
        HistoryBuffer._statistics_methods.update(methods)


def test_history_buffers_round_trip_as_real_objects(runs):
    hub = read_checkpoint(runs['det'])['message_hub']['log_scalars']
    buffer = hub['train/loss']
    assert type(buffer) is HistoryBuffer and type(buffer._log_history) is np.ndarray
    assert buffer.statistics('mean') == buffer.mean() > 0


# ---- 5. every crafted record is a CheckpointError naming the file ---------------------------
CRAFTED = {
    'three-argument getattr': {'m': history_buffer_method(HistoryBuffer, 'mean', None)},
    'history buffer with a (dict, slots) state': {
        'hub': history_buffer((_history_state(), {'max_length': 3}))},
    'object dtype': {'a': np.array([None, 1], dtype=object)},
    'structured dtype': {'a': np.zeros(2, dtype=[('x', 'f8'), ('y', 'i4')])},
    'Fortran-ordered array': {'a': np.asfortranarray(np.ones((2, 3)))},
    'history buffer with a negative max_length': {'a': history_buffer(_history_state(
        max_length=-1))},
    'history buffer with histories of different lengths': {'a': history_buffer(
        _history_state(_log_history=np.array([1.0])))},
}


@pytest.mark.parametrize('case', CRAFTED)
def test_crafted_records_are_named(case, tmp_path):
    path = tmp_path / 'crafted.pth'
    torch.save({'meta': CRAFTED[case]}, path)
    with pytest.raises(CheckpointError, match='refused') as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and 'weights_only=False' not in str(err.value)


# ---- 4. damaged files ----------------------------------------------------------------------
def test_a_flipped_byte_in_a_tensor_record_is_caught(runs, tmp_path, monkeypatch):
    path = tmp_path / 'damaged.pth'
    record = flip_inside_a_tensor_record(runs['det'], path)
    with pytest.raises(CheckpointError, match='CRC-32') as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and record in str(err.value)
    import pvt_mm.loading.checkpoint as ckpt  # meta-check: without the CRC check it loads silently
    monkeypatch.setattr(ckpt, 'check_zip_records', lambda path: None)
    damaged, good = (read_checkpoint(p)['state_dict'] for p in (path, runs['det']))
    assert sum(not torch.equal(damaged[k], good[k]) for k in good) == 1


def test_a_flipped_byte_in_safetensors_is_caught(runs, tmp_path, monkeypatch):
    path = tmp_path / 'b0.safetensors'
    convert_checkpoint.main([str(runs['det']), str(path), '--prefix', 'backbone.'])
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match='damaged') as err:
        read_checkpoint(path)
    assert str(path) in str(err.value)
    import pvt_mm.loading.checkpoint as ckpt  # meta-check: safetensors itself has no checksum
    monkeypatch.setattr(ckpt, 'check_safetensors_digest', lambda path: False)
    assert read_checkpoint(path)


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def test_publish_model_strips_training_state_and_names_its_hash(runs, tmp_path):
    out = publish_model.main([str(runs['det']), str(tmp_path / 'atss_demo.pth')])
    assert out.parent == tmp_path and out.name.startswith('atss_demo-')
    import hashlib
    assert hashlib.sha256(out.read_bytes()).hexdigest().startswith(out.stem.split('-')[-1])
    plain = torch.load(out, weights_only=True)  # no allow-list at all
    assert set(plain) == {'meta', 'state_dict'}
    assert plain['meta']['dataset_meta']['classes']
    assert read_checkpoint(out)['state_dict'].keys() == read_checkpoint(runs['det'])[
        'state_dict'].keys()
    renamed = tmp_path / 'atss_demo-0123abcd.pth'
    shutil.copy(out, renamed)
    with pytest.raises(CheckpointError, match='damaged or renamed'):
        read_checkpoint(renamed)


# ---- 3. tools/infer.py loads strictly; bad images are one line ------------------------------
def test_infer_refuses_a_checkpoint_of_another_model(runs, tmp_path, monkeypatch):
    args = [str(runs['image']), ATSS, str(runs['seg']), '--out-dir', str(tmp_path / 'a')]
    with pytest.raises(SystemExit, match=r'CheckpointError: .*does not match the model'):
        infer.main(args)
    assert not (tmp_path / 'a' / 'vis').exists()
    # meta-check: without the key check the inferencer draws random heads' predictions
    import pvt_mm.engine.checkpoint_io as io
    monkeypatch.setattr(io, 'check_model_checkpoint', lambda *a, **k: None)
    args[-1] = str(tmp_path / 'b')
    infer.main(args)
    assert (tmp_path / 'b' / 'vis' / runs['image'].name).is_file()


def test_infer_on_a_text_file_named_jpg_is_one_line(runs, tmp_path):
    fake = tmp_path / 'photo.jpg'
    fake.write_text('not an image\n')
    with pytest.raises(SystemExit, match=r'ValueError: .*photo\.jpg is not a readable image'):
        infer.main([str(fake), ATSS, str(runs['det']), '--out-dir', str(tmp_path / 'o')])


# ---- mmdet's and mmseg's own APIs ---------------------------------------------------------
def test_mmdet_and_mmseg_apis_load_our_checkpoints(runs, tmp_path, monkeypatch):
    """With ``import pvt_mm`` only: no allow-list, no environment variable."""
    from mmdet.apis import DetInferencer, inference_detector, init_detector
    from mmseg.apis import MMSegInferencer, inference_model, init_model
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ
    before = set(torch.serialization.get_safe_globals())  # a set: torch keeps no order
    image = str(runs['image'])
    det = DetInferencer(model=ATSS, weights=str(runs['det']), device='cpu',
                        show_progress=False)
    assert set(det(image)['predictions'][0]) >= {'bboxes', 'scores', 'labels'}
    assert 'bboxes' in inference_detector(init_detector(ATSS, str(runs['det']), device='cpu'), image
                                          ).pred_instances
    seg = MMSegInferencer(model=SEG, weights=str(runs['seg']), device='cpu')
    assert seg(image)['predictions'].shape == (128, 128)
    assert inference_model(init_model(SEG, str(runs['seg']), device='cpu'), image).pred_sem_seg.data.numel()
    assert set(torch.serialization.get_safe_globals()) == before
    # meta-check: mmengine's own local loader refuses our Runner checkpoints
    from mmengine.runner.checkpoint import CheckpointLoader, load_from_local
    monkeypatch.setitem(CheckpointLoader._schemes, '', load_from_local)
    with pytest.raises(Exception, match='HistoryBuffer|weights_only'):
        init_detector(ATSS, str(runs['det']), device='cpu')


# ---- last_checkpoint is relative; a killed save's temporary file is cleaned up -------------
def test_a_moved_work_dir_resumes_and_stale_temp_files_go(runs, tmp_path):
    moved = tmp_path / 'moved'
    shutil.copytree(runs['det_dir'], moved)
    assert (moved / 'last_checkpoint').read_text() == 'epoch_1.pth'
    stale = moved / '.epoch_2.pth.k9x2_abc.tmp'
    stale.write_bytes(b'half a checkpoint')
    cli.train_main([ATSS, '--work-dir', str(moved), '--resume',
                    *run_options(**{'train_cfg.max_epochs': 2})])
    assert read_checkpoint(moved / 'epoch_2.pth')['meta']['epoch'] == 2
    assert not stale.exists()
    # stock mmengine's absolute name of a work dir that no longer exists
    (moved / 'last_checkpoint').write_text(str(tmp_path / 'gone' / 'epoch_2.pth'))
    cli.train_main([ATSS, '--work-dir', str(moved), '--resume',
                    *run_options(**{'train_cfg.max_epochs': 3})])
    assert read_checkpoint(moved / 'epoch_3.pth')['meta']['epoch'] == 3
