"""No load is silently wrong and no file is half-written: strict ``load_from`` / tools/test.py
with an opt-out, list-form and prefixed ``Pretrained`` init_cfgs, unreadable files named on
every load path, ``--resume`` without a checkpoint, misspelled ``--cfg-options``, the
converter's SRC == DST refusal, atomic writes (SIGKILL) and ``.safetensors``, and training
checkpoints that survive a kill during the save with ``max_keep_ckpts=1``."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import official_state_dict
from mm_helpers import build_model
from mmengine.config import Config
from mmengine.fileio.backends.local_backend import LocalBackend
from mmengine.registry import MODELS

from payloads import run_options, state_dict_of
from pvt_mm.loading.checkpoint import _is_safetensors, read_checkpoint
from pvt_mm.loading.convert import CheckpointError, convert_pvt_checkpoint
from pvt_mm.demo import DemoDataSpec
from pvt_mm.engine import cli  # module import: pytest would collect cli.test_main
from pvt_mm.engine import runtime
from pvt_mm.engine.runtime import build_runner, check_cfg_options

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
import convert_checkpoint  # noqa: E402  tools/convert_checkpoint.py

ATSS = str(ROOT / 'configs/demo/atss_pvtv2-b0_fpn_demo.py')
TINY = DemoDataSpec(num_train=4, num_val=2)  # tiny_data's size (conftest.py)


@pytest.fixture(scope='module')
def detector_files(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """ATSS state dicts as checkpoints: the b0 config's own, one with a b1 backbone (and FPN
    input channels to match), and a backbone-only official b0 file."""
    out = tmp_path_factory.mktemp('detectors')
    files = {}
    for arch, channels in (('b0', [32, 64, 160, 256]), ('b1', [64, 128, 320, 512])):
        cfg = cli.train_config(cli.parse_train_args([ATSS, '--work-dir', str(out), *run_options(
            **{'model.backbone.arch': arch, 'model.neck.in_channels': channels})]))
        model = build_model(cfg)
        files[arch] = out / f'atss_{arch}.pth'
        torch.save({'meta': {'epoch': 1, 'iter': 1}, 'state_dict': model.state_dict()},
                   files[arch])
    files['backbone'] = out / 'pvt_v2_b0.pth'
    torch.save(official_state_dict('b0'), files['backbone'])
    return files


def _runner(tmp_path: Path, **options):
    cfg = cli.train_config(cli.parse_train_args(
        [ATSS, '--work-dir', str(tmp_path), *run_options(**options)]))
    return build_runner(cfg)


# ---- strict loads -------------------------------------------------------------------------
B1_INTO_B0 = (r'shape mismatch.*backbone\.stages\.0\.patch_embed\.proj\.weight: checkpoint '
              r'\(64, 3, 7, 7\) vs model \(32, 3, 7, 7\)')
BACKBONE_ONLY = r'missing key\(s\): backbone\.stages.*unexpected key\(s\): patch_embed1'


@pytest.mark.parametrize('wrong, load, expected', [
    ('b1', 'test', B1_INTO_B0), ('b1', 'load_from', B1_INTO_B0),
    ('backbone', 'load_from', BACKBONE_ONLY)])
def test_mismatched_checkpoint_is_an_error(wrong, load, expected, detector_files, tmp_path):
    path = detector_files[wrong]
    with pytest.raises(CheckpointError, match=expected) as err:
        if load == 'test':
            cli.test_main([ATSS, str(path), '--work-dir', str(tmp_path), *run_options()])
        else:
            cli.train_main([ATSS, '--work-dir', str(tmp_path), *run_options(load_from=str(path))])
    assert str(path) in str(err.value) and 'PVTv2 (b0)' in str(err.value)
    assert 'load_from_strict=False' in str(err.value)


def test_matching_checkpoint_loads_and_partial_loads_are_opt_in(detector_files, tmp_path):
    runner = _runner(tmp_path)
    runner.load_checkpoint(str(detector_files['b0']))  # the config's own layout: loads
    weight = runner.model.backbone.stages[0].patch_embed.proj.weight
    saved = read_checkpoint(detector_files['b0'])['state_dict']
    assert torch.equal(weight, saved['backbone.stages.0.patch_embed.proj.weight'])
    with pytest.raises(CheckpointError, match='does not match'):
        runner.load_checkpoint(str(detector_files['b1']))
    partial = _runner(tmp_path, load_from_strict=False)
    partial.load_checkpoint(str(detector_files['b1']))  # warns, loads what matches
    # the stock mmengine method (the protection removed) would load b1 silently
    from mmengine.runner import Runner
    Runner.load_checkpoint(partial, str(detector_files['b1']))


# ---- Pretrained init_cfg: list form and prefix --------------------------------------------
def _backbone(init_cfg) -> torch.nn.Module:
    model = MODELS.build(dict(type='PVTv2', arch='b0', init_cfg=init_cfg))
    model.init_weights()
    return model


def test_list_form_and_prefixed_pretrained_load_strictly(detector_files, tmp_path):
    official = official_state_dict('b0')
    expected = convert_pvt_checkpoint(official)['stages.1.blocks.0.attn.q.weight']
    path = str(detector_files['backbone'])
    for init_cfg in ([dict(type='Pretrained', checkpoint=path)],
                     [dict(type='TruncNormal', layer='Linear', std=0.02),
                      dict(type='Pretrained', checkpoint=path)]):
        model = _backbone(init_cfg)
        assert torch.equal(model.stages[1].blocks[0].attn.q.weight, expected)
    detector = tmp_path / 'detector.pth'  # backbone under 'backbone.', plus a neck
    whole = {**{f'backbone.{k}': v for k, v in official.items()}, 'neck.conv.weight': torch.ones(1)}
    torch.save({'state_dict': whole}, detector)
    model = _backbone([dict(type='Pretrained', checkpoint=str(detector), prefix='backbone')])
    assert torch.equal(model.stages[1].blocks[0].attn.q.weight, expected)
    b1 = detector_files['b1']
    with pytest.raises(CheckpointError, match=rf'{re.escape(str(b1))} does not match PVTv2 \(b0\)'):
        _backbone([dict(type='Pretrained', checkpoint=str(b1), prefix='backbone.')])


# ---- unreadable files, on every load path -------------------------------------------------
def _unreadable(kind: str, tmp_path: Path, detector_files) -> tuple[Path, str]:
    path = tmp_path / f'{kind}.pth'
    if kind == 'empty':
        path.write_bytes(b'')
        return path, 'empty'
    if kind == 'html':
        path.write_text('<!DOCTYPE html><html><body>Not Found</body></html>\n')
        return path, 'HTML'
    if kind == 'weights_only':  # a model's weights: readable, but no training state
        torch.save(read_checkpoint(detector_files['b0'])['state_dict'], path)
        return path, "no 'meta' entry: it holds weights, not the training state"
    if kind == 'truncated':
        path.write_bytes(detector_files['b0'].read_bytes()[:20000])
        return path, 'torch zip checkpoint of 20000 bytes'
    path.mkdir()
    return path, 'directory'


def test_unreadable_files_are_named_by_read_checkpoint(tmp_path, detector_files):
    for kind in ('empty', 'html', 'truncated', 'directory'):
        path, found = _unreadable(kind, tmp_path, detector_files)
        with pytest.raises(CheckpointError, match=found) as err:
            read_checkpoint(path)
        assert str(path) in str(err.value)


@pytest.mark.parametrize('load, kind', [
    ('backbone', 'empty'), ('backbone', 'html'), ('backbone', 'truncated'),
    ('convert', 'empty'), ('convert', 'truncated'), ('convert', 'directory'),
    ('load_from', 'empty'), ('load_from', 'directory'), ('resume', 'truncated'),
    ('resume', 'directory'), ('resume', 'weights_only'), ('test', 'html'),
    ('test', 'directory')])
def test_unreadable_files_are_named_on_every_path(load, kind, tmp_path, detector_files):
    path, found = _unreadable(kind, tmp_path, detector_files)
    work = ['--work-dir', str(tmp_path / 'work')]
    run = {'backbone': lambda: _backbone(dict(type='Pretrained', checkpoint=str(path))),
           'convert': lambda: convert_checkpoint.main([str(path), str(tmp_path / 'out.pth')]),
           'load_from': lambda: cli.train_main([ATSS, *work, *run_options(load_from=str(path))]),
           'resume': lambda: cli.train_main([ATSS, *work, '--resume', str(path), *run_options()]),
           'test': lambda: cli.test_main([ATSS, str(path), *work, *run_options()])}[load]
    with pytest.raises(CheckpointError, match=found) as err:
        run()
    assert str(path) in str(err.value)


# ---- --resume and --cfg-options ------------------------------------------------------------
def test_resume_without_a_checkpoint_says_so(tiny_data, tmp_path, monkeypatch):
    logged = []
    monkeypatch.setattr(runtime, 'print_log', lambda msg, **kw: logged.append(msg))
    cfg = cli.train_config(cli.parse_train_args([ATSS, '--resume', '--work-dir', str(tmp_path)]))
    assert not cfg.resume and cfg.load_from is None
    assert any(f'no checkpoint found in {tmp_path}' in m and 'starting from scratch' in m
               for m in logged)
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_3.pth'))
    with pytest.raises(FileNotFoundError, match='epoch_3.pth'):
        cli.train_config(cli.parse_train_args([ATSS, '--resume', '--work-dir', str(tmp_path)]))
    with pytest.raises(FileNotFoundError, match='--resume checkpoint not found.*nope.pth'):
        cli.train_config(cli.parse_train_args([ATSS, '--resume', str(tmp_path / 'nope.pth')]))


def test_misspelled_cfg_options_are_refused():
    cfg = Config.fromfile(ATSS)
    for key, near in (('optim_wraper.optimizer.lr', 'optim_wrapper'),
                      ('optim_wrapper.optimzer.lr', 'optimizer'),
                      ('train_cfg.max_epoch', 'max_epochs')):
        with pytest.raises(ValueError, match=f'{key}.*did you mean {near!r}'):
            check_cfg_options(cfg, {key: 10})
    check_cfg_options(cfg, {k: 1 for k in (  # keys mmdet/mmseg tools and Runner read
        'launcher', 'work_dir', 'resume', 'load_from', 'load_from_strict', 'randomness.seed',
        'experiment_name', 'env_cfg.cudnn_benchmark', 'custom_imports', 'model_wrapper_cfg',
        'default_hooks.checkpoint.max_keep_ckpts', 'model.backbone.init_cfg.checkpoint',
        'optim_wrapper.optimizer.lr')})
    with pytest.raises(ValueError, match='optim_wrapper'):  # through tools/train.py's parser
        cli.train_config(cli.parse_train_args([ATSS, '--cfg-options', 'optim_wraper.lr=1']))


# ---- the converter: SRC == DST, atomic writes, safetensors --------------------------------
def test_convert_refuses_to_overwrite_its_input(tmp_path):
    src = tmp_path / 'b0.pth'
    torch.save(official_state_dict('b0'), src)
    data = src.read_bytes()
    (tmp_path / 'link.pth').symlink_to(src)
    os.link(src, tmp_path / 'hard.pth')
    for dst in (src, tmp_path / 'link.pth', tmp_path / 'hard.pth', tmp_path / '.' / 'b0.pth'):
        with pytest.raises(SystemExit, match='is the input file'):
            convert_checkpoint.main([str(src), str(dst)])
    assert src.read_bytes() == data


def test_convert_writes_and_reads_safetensors(tmp_path):
    from safetensors.torch import load_file
    src, official = tmp_path / 'b0.pth', official_state_dict('b0')
    torch.save(official, src)
    expected = convert_pvt_checkpoint(official)
    for dst, extra in ((tmp_path / 'b0.safetensors', []),
                       (tmp_path / 'b0_st.pth', ['--format', 'safetensors'])):
        convert_checkpoint.main([str(src), str(dst), '--arch', 'b0', *extra])
        assert _is_safetensors(dst.read_bytes()[:64], dst.stat().st_size)
        assert all(torch.equal(v, expected[k]) for k, v in load_file(dst).items())
    model = _backbone(dict(type='Pretrained', checkpoint=str(tmp_path / 'b0_st.pth')))
    assert torch.equal(model.stages[0].patch_embed.proj.weight,
                       expected['stages.0.patch_embed.proj.weight'])
    convert_checkpoint.main([str(tmp_path / 'b0.safetensors'), str(tmp_path / 'back.pth')])
    back = torch.load(tmp_path / 'back.pth', weights_only=True)
    assert back.keys() == expected.keys()


SLOW_WRITE = """
import sys, time, torch
sys.path.insert(0, sys.argv[1])
import convert_checkpoint
def slow_save(obj, f, *args, **kwargs):
    with open(f, 'wb') as out:
        out.write(b'PK\\x03\\x04 partial')
        out.flush()
        time.sleep(120)  # killed here
torch.save = slow_save
convert_checkpoint.main(sys.argv[2:])
"""


def test_convert_killed_while_writing_leaves_files_intact(tmp_path):
    src, dst = tmp_path / 'b0.pth', tmp_path / 'out.pth'
    torch.save(official_state_dict('b0'), src)
    dst.write_bytes(b'previous output')
    before = src.read_bytes()
    proc = subprocess.Popen([sys.executable, '-c', SLOW_WRITE, str(ROOT / 'tools'), str(src),
                             str(dst)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not [p for p in tmp_path.glob('.out.pth.*.tmp') if p.stat().st_size]:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, 'the temporary file never appeared'
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert dst.read_bytes() == b'previous output' and src.read_bytes() == before


# ---- training checkpoints survive a kill during the save ----------------------------------
class _Killed(BaseException):
    """Stands for SIGKILL in the middle of writing a checkpoint (nothing catches it)."""


@pytest.mark.parametrize('hook', ['AtomicCheckpointHook', 'mmengine.CheckpointHook'])
def test_kill_during_checkpoint_save_keeps_a_resumable_checkpoint(hook, tiny_data, tmp_path,
                                                                  monkeypatch):
    """max_keep_ckpts=1: pvt_mm's hook keeps epoch_1 until epoch_2 is complete; mmengine's
    own (the protection removed) deletes it first and leaves nothing to resume from."""
    opts = {'default_hooks.checkpoint.type': hook, 'default_hooks.checkpoint.interval': 1,
            'default_hooks.checkpoint.max_keep_ckpts': 1, 'train_cfg.max_epochs': 2}
    train = ['--work-dir', str(tmp_path), '--resume']
    put = LocalBackend.put

    def dying_put(self, obj, filepath):
        if 'epoch_2' in str(filepath):
            put(self, obj[:len(obj) // 2], filepath)
            raise _Killed
        put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, 'put', dying_put)
    with pytest.raises(_Killed):  # epoch 1 is saved, epoch 2's save is killed
        cli.train_main([ATSS, *train, *run_options(**opts)])
    monkeypatch.setattr(LocalBackend, 'put', put)
    if hook.startswith('mmengine'):
        assert not (tmp_path / 'epoch_1.pth').exists()  # deleted before epoch 2 was written
        with pytest.raises((CheckpointError, FileNotFoundError)):
            cli.train_main([ATSS, *train, *run_options(**opts)])
        return
    assert (tmp_path / 'last_checkpoint').read_text() == 'epoch_1.pth'  # relative: movable
    assert not (tmp_path / 'epoch_2.pth').exists() and not list(tmp_path.glob('.*.tmp'))
    assert read_checkpoint(tmp_path / 'epoch_1.pth')['meta']['epoch'] == 1
    cli.train_main([ATSS, *train, *run_options(**opts)])
    assert state_dict_of(read_checkpoint(tmp_path / 'epoch_2.pth'))
    assert read_checkpoint(tmp_path / 'epoch_2.pth')['meta']['epoch'] == 2
    assert not (tmp_path / 'epoch_1.pth').exists()  # max_keep_ckpts=1, once epoch 2 is whole
