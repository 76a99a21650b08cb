"""No checkpoint can run code, on any load path: the backbone's ``init_cfg`` alone, ``init_cfg``
inside tools/train.py, tools/convert_checkpoint.py, ``load_from``, ``--resume PATH`` and
tools/test.py, each with a plain ``__reduce__`` payload and with the ``getattr`` gadget hidden
in a real checkpoint written by tools/train.py. The payload's marker file is never created,
the load fails and the message names the file. Meta-checks show both payloads are live (they
run under the old process-wide ``getattr`` allow-list), and that real checkpoints still load."""
from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.registry import MODELS

from payloads import OLD_ALLOW_LIST, hide_gadget, plain_payload, run_options
from pvt_mm.loading.checkpoint import read_checkpoint
from pvt_mm.loading.convert import CheckpointError
from pvt_mm.demo import DemoDataSpec, make_demo_data
from pvt_mm.demo.pipeline import DATA_ENV
from pvt_mm.engine import cli  # module import: pytest would collect cli.test_main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
import convert_checkpoint  # noqa: E402  tools/convert_checkpoint.py

ATSS = str(ROOT / 'configs/demo/atss_pvtv2-b0_fpn_demo.py')
TINY = DemoDataSpec(num_train=4, num_val=2)
REFUSED = 'other than tensors'  # read_checkpoint's message for a pickle that references code


@pytest.fixture(scope='module')
def real_checkpoint(tmp_path_factory) -> Path:
    """One iteration of the demo ATSS with tools/train.py: a real Runner checkpoint
    (state dict, optimizer, schedulers, message hub with HistoryBuffers)."""
    root = make_demo_data(tmp_path_factory.mktemp('sec_data'), TINY)
    work_dir = tmp_path_factory.mktemp('sec_run')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DATA_ENV, str(root))
        cli.train_main([ATSS, '--work-dir', str(work_dir), *run_options()])
        yield work_dir / 'epoch_1.pth'


@pytest.fixture(params=['plain', 'gadget'])
def hostile(request, real_checkpoint, tmp_path) -> tuple[Path, Path]:
    """(checkpoint file, marker file its payload would create)."""
    marker = tmp_path / f'{request.param}_ran'
    path = tmp_path / f'{request.param}_payload.pth'
    if request.param == 'plain':
        return plain_payload(path, marker), marker
    return hide_gadget(real_checkpoint, path, marker), marker


def _backbone_init_cfg(path: Path, work_dir: Path) -> None:
    model = MODELS.build(dict(type='PVTv2', arch='b0',
                              init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    model.init_weights()


def _train_init_cfg(path: Path, work_dir: Path) -> None:
    cli.train_main([ATSS, '--work-dir', str(work_dir), *run_options(**{
        'model.backbone.init_cfg.type': 'Pretrained',
        'model.backbone.init_cfg.checkpoint': str(path)})])


def _convert(path: Path, work_dir: Path) -> None:
    convert_checkpoint.main([str(path), str(work_dir / 'converted.pth')])


def _load_from(path: Path, work_dir: Path) -> None:
    cli.train_main([ATSS, '--work-dir', str(work_dir), *run_options(load_from=str(path))])


def _resume(path: Path, work_dir: Path) -> None:
    cli.train_main([ATSS, '--work-dir', str(work_dir), '--resume', str(path), *run_options()])


def _test(path: Path, work_dir: Path) -> None:
    cli.test_main([ATSS, str(path), '--work-dir', str(work_dir), *run_options()])


LOAD_PATHS: dict[str, Callable[[Path, Path], None]] = {
    'backbone_init_cfg': _backbone_init_cfg, 'train_init_cfg': _train_init_cfg,
    'convert_tool': _convert, 'load_from': _load_from, 'resume': _resume, 'test_tool': _test}


@pytest.mark.parametrize('load', LOAD_PATHS)
def test_payload_never_runs(load, hostile, tmp_path):
    path, marker = hostile
    before = set(map(str, torch.serialization.get_safe_globals()))
    with pytest.raises(CheckpointError, match=REFUSED) as err:
        LOAD_PATHS[load](path, tmp_path / 'work')
    assert str(path) in str(err.value)
    assert not marker.exists(), f'the payload ran through {load}'
    assert set(map(str, torch.serialization.get_safe_globals())) == before  # nothing leaked


def test_payloads_are_live_without_the_protection(hostile):
    """Meta-check: under the old process-wide allow-list (``builtins.getattr``) the gadget
    runs and the file loads normally; the plain payload runs with ``weights_only=False``."""
    path, marker = hostile
    if 'gadget' in path.name:
        with torch.serialization.safe_globals(OLD_ALLOW_LIST()):
            checkpoint = torch.load(path, weights_only=True)
        assert checkpoint['meta']['epoch'] == 1
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


def test_the_getattr_stand_in_resolves_only_history_buffer_methods():
    from pvt_mm.loading.safe_pickle import _getattr, _HistoryBuffer, stand_ins
    assert dict((name, fn) for fn, name in stand_ins())['builtins.getattr'] is _getattr
    assert _getattr(_HistoryBuffer, 'mean').name == 'mean'
    for args in ((getattr, '__self__'), (_HistoryBuffer, '__init__'), (HistoryBuffer, 'mean'),
                 (_HistoryBuffer, 'register_statistics'), (torch, 'load'),
                 (_HistoryBuffer, 'mean', None), (_HistoryBuffer,)):
        with pytest.raises(pickle.UnpicklingError, match='refused'):
            _getattr(*args)
    assert not any(isinstance(g, tuple) for g in torch.serialization.get_safe_globals())


def test_tool_checkpoints_read_without_a_runner(real_checkpoint, tmp_path):
    """Whole Runner checkpoints (HistoryBuffer, numpy) read with the scoped allow-list, as
    backbone weights (init_cfg, convert tool) too; plain torch.load still refuses them."""
    checkpoint = read_checkpoint(real_checkpoint)
    assert checkpoint['meta']['epoch'] == 1
    assert checkpoint['message_hub']['log_scalars']['train/loss'].current() > 0
    with pytest.raises(pickle.UnpicklingError):
        torch.load(real_checkpoint, weights_only=True)  # the allow-list did not leak
    _backbone_init_cfg(real_checkpoint, tmp_path)
    _convert(real_checkpoint, tmp_path)
    assert (tmp_path / 'converted.pth').is_file()


def test_a_process_wide_getattr_allow_list_is_ignored_by_pvt_mm_loads(hostile, tmp_path):
    """Someone else's ``add_safe_globals([getattr])`` (what pvt_mm itself used to do) does not
    reopen the hole for pvt_mm's loads, and is left in place afterwards."""
    path, marker = hostile
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([getattr])
    try:
        with pytest.raises(CheckpointError, match=REFUSED):
            _backbone_init_cfg(path, tmp_path)
        assert getattr in torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)
    assert not marker.exists()


def test_the_matrix_fails_without_the_protection(real_checkpoint, tmp_path, monkeypatch):
    """Meta-check: with the old allow-list (the real ``getattr`` instead of the stand-in)
    restored in pvt_mm's reader, the gadget runs through ``load_from`` and the backbone's
    ``init_cfg`` and both load without an error: test_payload_never_runs would fail."""
    import pvt_mm.loading.safe_pickle as safe_pickle
    monkeypatch.setattr(safe_pickle, 'stand_ins', OLD_ALLOW_LIST)
    for load in (_backbone_init_cfg, _load_from):
        marker = tmp_path / f'{load.__name__}_ran'
        path = hide_gadget(real_checkpoint, tmp_path / f'{load.__name__}.pth', marker)
        load(path, tmp_path / 'work')
        assert marker.exists(), load.__name__


def test_tools_test_py_process_fails_on_the_gadget(real_checkpoint, tmp_path):
    """The real command line: tools/test.py exits non-zero naming the file; nothing ran."""
    import subprocess
    marker = tmp_path / 'ran'
    path = hide_gadget(real_checkpoint, tmp_path / 'gadget.pth', marker)
    proc = subprocess.run([sys.executable, str(ROOT / 'tools/test.py'), ATSS, str(path),
                           '--work-dir', str(tmp_path / 'work'), *run_options()],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode != 0
    assert f'CheckpointError: {path} references Python objects' in proc.stderr
    assert not marker.exists()
