"""Distributed training on CPU: ``tools/dist_train.sh`` starts 2 torchrun processes (gloo).

Each rank records, through :class:`RankProbeHook` (imported by the workers from this file),
which images it trained on and its final weights. The run is convincing when the ranks saw
different images, their weights changed from the initial ones, and still ended identical to
each other and to the checkpoint rank 0 saved: gradients were all-reduced every step.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from mmengine.dist import get_dist_info
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from pvt_mm.loading.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = 'configs/demo/atss_pvtv2-b0_fpn_demo.py'
WORLD_SIZE = 2
NUM_TRAIN, BATCH = 8, 2
DIST_TIMEOUT_S = 540
SYNCBN_TIMEOUT_S = 180


@HOOKS.register_module(force=True)
class RankProbeHook(Hook):
    """Saves ``rank{r}.pth``: the rank's image ids, its initial weight sum, final weights."""

    def before_train(self, runner) -> None:
        self.img_ids: list[int] = []
        self.initial_sum = _weight_sum(self._model(runner).state_dict())

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.img_ids += [s.img_id for s in data_batch['data_samples']]

    def after_train(self, runner) -> None:
        rank, world_size = get_dist_info()
        torch.save(dict(rank=rank, world_size=world_size, img_ids=self.img_ids,
                        initial_sum=self.initial_sum,
                        state_dict=self._model(runner).state_dict()),
                   Path(runner.work_dir) / f'rank{rank}.pth')

    @staticmethod
    def _model(runner) -> torch.nn.Module:
        return runner.model.module if is_model_wrapper(runner.model) else runner.model


def _weight_sum(state_dict: dict) -> float:
    return sum(v.double().sum().item() for v in state_dict.values() if v.is_floating_point())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_process_gloo_training_keeps_ranks_in_sync(tmp_path):
    from pvt_mm.demo import DemoDataSpec, make_demo_data
    data = make_demo_data(tmp_path / 'data', DemoDataSpec(num_train=NUM_TRAIN, num_val=2))
    work_dir = tmp_path / 'work'
    config = tmp_path / 'probed.py'  # the demo config plus the probe hook
    config.write_text(f"_base_ = '{ROOT / CONFIG}'\n"
                      "custom_imports = dict(imports=['pvt_mm', 'test_distributed'])\n"
                      "custom_hooks = [dict(type='RankProbeHook')]\n")
    env = dict(os.environ, PVT_MM_DEMO_DATA=str(data), PYTHON=sys.executable,
               PORT=str(_free_port()), OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([str(ROOT / 'tests'), os.environ.get('PYTHONPATH', '')]))
    cmd = ['bash', 'tools/dist_train.sh', str(config), str(WORLD_SIZE), '--work-dir', str(work_dir),
           '--cfg-options', 'train_cfg.max_epochs=1', f'train_dataloader.batch_size={BATCH}',
           'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
           'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None']
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=DIST_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(work_dir / f'rank{r}.pth', weights_only=True) for r in range(WORLD_SIZE)]
    assert [r['world_size'] for r in ranks] == [WORLD_SIZE] * WORLD_SIZE
    assert 'gloo' in proc.stdout + proc.stderr or 'gloo' in _log(work_dir)
    # the data was sharded: each rank trained on its own half
    ids = [set(r['img_ids']) for r in ranks]
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == NUM_TRAIN
    # the weights moved, and moved the same way on both ranks
    final = [r['state_dict'] for r in ranks]
    assert ranks[0]['initial_sum'] == ranks[1]['initial_sum']  # same seed, same init
    assert _weight_sum(final[0]) != ranks[0]['initial_sum']
    assert final[0].keys() == final[1].keys()
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    # and rank 0's checkpoint holds them
    saved = read_checkpoint(work_dir / 'epoch_1.pth')
    assert saved['meta']['iter'] == NUM_TRAIN // (BATCH * WORLD_SIZE)
    assert all(torch.equal(saved['state_dict'][k], final[0][k]) for k in final[0])


def _log(work_dir: Path) -> str:
    return '\n'.join(p.read_text() for p in work_dir.glob('*/*.log'))


SYNCBN_CHECK = """
import sys, torch
from pvt_mm.engine.cpu import CPUDistributedDataParallel
torch.distributed.init_process_group('gloo', init_method='file://' + sys.argv[1], rank=0,
                                     world_size=1)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.SyncBatchNorm(4))
x = torch.randn(2, 3, 8, 8)
try:
    model(x)
    sys.exit('SyncBatchNorm ran on CPU: the check below proves nothing')
except ValueError as err:
    assert 'GPU' in str(err), err
wrapped = CPUDistributedDataParallel(model, device_ids=[0])
assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in wrapped.modules())
wrapped(x).sum().backward()
assert wrapped.module[0].weight.grad is not None
torch.distributed.destroy_process_group()
print('ok')
"""


def test_cpu_ddp_wrapper_runs_syncbn_models(tmp_path):
    """torch's SyncBatchNorm refuses CPU tensors once a process group exists; the CPU wrapper
    turns it into BatchNorm. A 1-process gloo group shows it, in a child process so that this
    one keeps no process group."""
    proc = subprocess.run([sys.executable, '-c', SYNCBN_CHECK, str(tmp_path / 'store')],
                          cwd=ROOT, capture_output=True, text=True, timeout=SYNCBN_TIMEOUT_S)
    assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), proc.stderr[-3000:]
