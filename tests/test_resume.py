"""A killed job ends exactly where an uninterrupted one would (pvt_mm.engine.resume).

``tools/train.py`` trains the demo ATSS detector, shrunk (6 images of 64 px, batch 2: 3
batches per epoch, 3 epochs), with ``randomness.seed=0 deterministic=True``. Two runs are
killed with SIGKILL from inside (a test-only hook that kills its own process in the middle
of an iteration, after that iteration's optimizer step and before its checkpoint):

- *mid-epoch*: checkpoints every iteration, killed in iteration 6 (epoch 2, batch 3), so
  ``--resume`` continues from ``iter_5.pth`` at epoch 2, batch 3 (one batch of it left);
- *epoch boundary*: checkpoints every epoch, killed in iteration 8 (epoch 3, batch 2),
  ``--resume`` continues from ``epoch_2.pth``; this one loads data in 2 persistent worker
  processes, the others in the main process.

Every parameter and optimizer-state tensor of each resumed run's final checkpoint must equal
those of an uninterrupted run exactly (max |diff| == 0). With mmengine's stock
``EpochBasedTrainLoop`` (``train_cfg.type='mmengine.EpochBasedTrainLoop'``) the same test
fails: the flips drawn after the resume differ and the mid-epoch resume reruns the epoch.

A second, in-process test checks each of the loop's protections on a toy runner (a sampler
that draws from torch's global generator when an epoch starts, augmentation drawing from
NumPy, a model drawing from torch): a resumed run sees exactly the batches, augmentations and
model noise of the uninterrupted run.
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import DATA_SAMPLERS, HOOKS
from mmengine.runner import Runner

from pvt_mm.demo import DemoDataSpec, SceneSpec
from pvt_mm.demo.pipeline import DATA_ENV
from pvt_mm.engine.resume import SeededBatch, _SeededFetch

ROOT = Path(__file__).resolve().parents[1]
ATSS = ROOT / 'configs/demo/atss_pvtv2-b0_fpn_demo.py'
KILL_ENV = 'PVT_MM_TEST_KILL_IN_ITER'
TINY = DemoDataSpec(num_train=6, num_val=1, scene=SceneSpec.scaled(64))  # tiny_data's size
BATCHES_PER_EPOCH = 3  # 6 images, batch 2
EPOCHS = 3
FINAL_ITER = EPOCHS * BATCHES_PER_EPOCH
RUN_TIMEOUT = 300


@HOOKS.register_module(force=True)
class KillInIterHook(Hook):
    """Test only: SIGKILL this process in iteration ``$PVT_MM_TEST_KILL_IN_ITER`` (1-based),
    after its optimizer step and before any other hook (so before its checkpoint)."""

    priority = 'HIGHEST'

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if os.environ.get(KILL_ENV) == str(runner.iter + 1):
            os.kill(os.getpid(), signal.SIGKILL)


CONFIG = f"""
_base_ = [{str(ATSS)!r}]
custom_imports = dict(imports=['pvt_mm', 'test_resume'], allow_failed_imports=False)
randomness = dict(seed=0, deterministic=True)
train_dataloader = dict(batch_size=2, num_workers={{workers}},
                        persistent_workers={{workers}} > 0)
train_cfg = dict(max_epochs={EPOCHS}, val_interval={EPOCHS + 1})
val_cfg = None
val_dataloader = None
val_evaluator = None
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end={EPOCHS}, eta_min=1e-5,
         convert_to_iter_based=True)]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=1, by_epoch={{by_epoch}}))
custom_hooks = [dict(type='KillInIterHook')]
model = dict(backbone=dict(drop_path_rate=0.1))  # the model draws from torch's generator
"""


def _train(config: Path, work_dir: Path, data: Path, *extra: str, kill_in: int = 0,
           ) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / 'tests'), str(ROOT)]),
               OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', **{DATA_ENV: str(data)})
    env.pop(KILL_ENV, None)
    if kill_in:
        env[KILL_ENV] = str(kill_in)
    return subprocess.run(
        [sys.executable, str(ROOT / 'tools/train.py'), str(config), '--work-dir',
         str(work_dir), *extra], env=env, capture_output=True, text=True,
        timeout=RUN_TIMEOUT)


def _config(tmp: Path, name: str, workers: int, by_epoch: bool) -> Path:
    path = tmp / f'{name}.py'
    path.write_text(CONFIG.format(workers=workers, by_epoch=by_epoch))
    return path


def _tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    # written by this test's own runs (their message-hub logs need more than weights_only)
    ckpt = torch.load(checkpoint, map_location='cpu', weights_only=False)
    out = {f'param/{k}': v for k, v in ckpt['state_dict'].items()}
    for index, state in ckpt['optimizer']['state'].items():
        for key, value in state.items():
            out[f'optim/{index}/{key}'] = torch.as_tensor(value)
    for index, group in enumerate(ckpt['optimizer']['param_groups']):
        out[f'optim/group{index}/lr'] = torch.tensor(group['lr'], dtype=torch.float64)
    return out


def _max_diff(a: Path, b: Path) -> tuple[float, int]:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    diffs = [(ta[k].double() - tb[k].double()).abs().max().item() for k in ta]
    return max(diffs), sum(d > 0 for d in diffs)


def _log(work_dir: Path) -> str:
    return '\n'.join(p.read_text() for p in sorted(work_dir.glob('*/*.log')))


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_killed_run_resumes_bit_exactly(tiny_data: Path, tmp_path: Path):
    per_iter = _config(tmp_path, 'per_iter', workers=0, by_epoch=False)
    per_epoch_workers = _config(tmp_path, 'per_epoch', workers=2, by_epoch=True)
    ref, mid, edge = (tmp_path / n for n in ('reference', 'mid_epoch', 'epoch_boundary'))
    with ThreadPoolExecutor(3) as pool:
        runs = [pool.submit(_train, per_iter, ref, tiny_data),
                pool.submit(_train, per_iter, mid, tiny_data, kill_in=6),
                pool.submit(_train, per_epoch_workers, edge, tiny_data, kill_in=8)]
        reference, killed_mid, killed_edge = (r.result() for r in runs)
    _ok(reference)
    for killed in (killed_mid, killed_edge):
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(p.name for p in mid.glob('*.pth')) == [f'iter_{i}.pth' for i in range(1, 6)]
    assert sorted(p.name for p in edge.glob('*.pth')) == ['epoch_1.pth', 'epoch_2.pth']
    record = torch.load(mid / 'iter_5.pth', weights_only=False)['meta']['exact_resume']
    assert record == dict(version=1, epoch=1, batch=2, epoch_length=BATCHES_PER_EPOCH,
                          sampler_seed=0)  # plain ints: weights_only loads need no globals

    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(_train, per_iter, mid, tiny_data, '--resume'),
                pool.submit(_train, per_epoch_workers, edge, tiny_data, '--resume')]
        resumed_mid, resumed_edge = (r.result() for r in runs)
    _ok(resumed_mid)
    _ok(resumed_edge)

    mid_log = _log(mid)
    assert 'resumed epoch: 1, iter: 5' in mid_log
    assert 'resuming epoch 2 at batch 3 of 3' in mid_log
    trained = re.findall(r'Epoch\(train\)\s+\[(\d+)\]\[\s*(\d+)/\d+\]', mid_log)
    # iterations 1-5 logged before the kill (6 died before its log line), then 6-9 once each
    assert trained[-4:] == [('2', '3'), ('3', '1'), ('3', '2'), ('3', '3')]
    assert len(trained) == 5 + 4
    assert 'resumed epoch: 2, iter: 6' in _log(edge)

    final = ref / f'iter_{FINAL_ITER}.pth'
    for resumed in (mid / f'iter_{FINAL_ITER}.pth', edge / f'epoch_{EPOCHS}.pth'):
        assert _max_diff(final, resumed) == (0.0, 0), resumed


@DATA_SAMPLERS.register_module(force=True)
class GlobalRNGSampler(torch.utils.data.Sampler):
    """Test only: shuffles with torch's global generator when an epoch starts (as torch's
    ``RandomSampler`` without a generator does)."""

    def __init__(self, dataset, seed=None) -> None:
        self.size = len(dataset)

    def __iter__(self):
        return iter(torch.randperm(self.size).tolist())

    def __len__(self) -> int:
        return self.size


class ToyData(torch.utils.data.Dataset):
    """Sample ``i``: ``[i, u]`` with ``u`` an "augmentation" drawn from NumPy's generator."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index):
        return dict(inputs=torch.tensor([float(index), np.random.rand()], dtype=torch.float64))


class ToyModel(BaseModel):
    """Records, per step, its batch and a draw from torch's generator (dropout-like noise)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
        self.steps: list[tuple] = []

    def forward(self, inputs, data_samples=None, mode='loss'):
        batch, noise = torch.stack(inputs), torch.rand(1, dtype=torch.float64)
        self.steps.append((batch.tolist(), noise.item()))
        return dict(loss=((batch @ self.w) * noise).sum())


def _toy_runner(work_dir: Path, name: str, resume_from: Path | None = None) -> Runner:
    return Runner(
        model=ToyModel(), work_dir=str(work_dir), experiment_name=name,
        train_dataloader=dict(dataset=ToyData(), sampler=dict(type='GlobalRNGSampler'),
                              batch_size=2, num_workers=0),
        train_cfg=dict(type='ExactResumeEpochBasedTrainLoop', max_epochs=2),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=False)),
        randomness=dict(seed=0), load_from=str(resume_from) if resume_from else None,
        resume=resume_from is not None, default_scope='mmengine')


def test_resumed_loop_replays_sampler_augmentation_and_model_draws(tmp_path: Path):
    import pvt_mm.engine  # noqa: F401  registers the loop
    uninterrupted = _toy_runner(tmp_path / 'full', f'toy_full_{os.getpid()}')
    uninterrupted.train()
    full = uninterrupted.model.steps
    assert len(full) == 8 and len({str(s) for s in full}) == 8
    # epoch 2, batch 2 of 4 done: iterations 7 and 8 are left
    resumed = _toy_runner(tmp_path / 'resumed', f'toy_resumed_{os.getpid()}',
                          resume_from=tmp_path / 'full' / 'iter_6.pth')
    torch.manual_seed(123)  # whatever state the new process starts in
    np.random.seed(123)
    resumed.train()  # a stock Runner: mmengine's loader reads through pvt_mm (import pvt_mm)
    assert resumed.model.steps == full[6:]
    assert torch.equal(resumed.model.w, uninterrupted.model.w)


def test_seeded_fetch_is_a_function_of_the_seed_and_leaves_the_callers_state():
    fetch = _SeededFetch(ToyData())
    np.random.seed(1)
    before = (np.random.get_state()[1].copy(), torch.get_rng_state(), random.getstate())
    first = [s['inputs'].tolist() for s in fetch(SeededBatch([3, 3, 5], seed=7))]
    after = (np.random.get_state()[1], torch.get_rng_state(), random.getstate())
    assert np.array_equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert before[2] == after[2]
    np.random.seed(2)
    again = [s['inputs'].tolist() for s in fetch(SeededBatch([3, 3, 5], seed=7))]
    assert again == first
    assert first[0] != first[1]  # each slot has its own stream, even for the same image
    other = [s['inputs'].tolist() for s in fetch(SeededBatch([3, 3, 5], seed=8))]
    assert other != first
