"""DropPathWarmupHook: the backbone's stochastic-depth rate follows the configured schedule,
by epoch or iteration, through model wrappers and a real mmengine Runner."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop, Runner
from torch import nn

from pvt_mm.engine import DropPathWarmupHook
from pvt_mm.models.backbones import PVTv2

# a 4-block PVTv2 that builds and runs in milliseconds
TINY_ARCH = dict(embed_dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
TINY_INPUT = 32  # the smallest input reaching stride 32 with sr_ratio 8 at stride 4
BUILT_RATE = 0.3


def last_block_rate(backbone: PVTv2) -> float:
    """The linear rule gives the last block exactly the configured rate."""
    return backbone.stages[-1].blocks[-1].drop_path.drop_prob


class ToyModel(BaseModel):
    """A backbone and a loss; records the drop-path rate each training step sees."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = PVTv2(arch=TINY_ARCH, drop_path_rate=BUILT_RATE)
        self.seen: list[float] = []

    def forward(self, inputs: torch.Tensor, data_samples=None, mode: str = 'tensor'):
        if mode == 'loss':
            self.seen.append(last_block_rate(self.backbone))
            return dict(loss=self.backbone(inputs)[-1].mean())
        return self.backbone(inputs)


def fake_runner(model: nn.Module, loop: object = None) -> SimpleNamespace:
    return SimpleNamespace(model=model, epoch=0, iter=0, train_loop=loop or object())


def run_epochs(hook: DropPathWarmupHook, runner: SimpleNamespace, epochs: int) -> list[float]:
    hook.before_train(runner)
    rates = []
    for epoch in range(epochs):
        runner.epoch = epoch
        hook.before_train_epoch(runner)
        hook.before_train_iter(runner, 0)  # ignored when by_epoch
        rates.append(last_block_rate(_backbone(runner.model)))
    return rates


def _backbone(model: nn.Module) -> PVTv2:
    return (model.module if isinstance(model, nn.DataParallel) else model).backbone


def test_registered_for_mmdet_and_mmseg_configs():
    from mmdet.registry import HOOKS as DET_HOOKS
    from mmseg.registry import HOOKS as SEG_HOOKS
    assert HOOKS.get('DropPathWarmupHook') is DropPathWarmupHook
    for registry in (DET_HOOKS, SEG_HOOKS):
        hook = registry.build(dict(type='DropPathWarmupHook', milestones=[(0, 0.), (2, 0.1)]))
        assert isinstance(hook, DropPathWarmupHook)


def test_steps_by_epoch_and_keeps_built_rate_before_first_milestone():
    hook = DropPathWarmupHook(milestones=[(2, 0.), (4, 0.2)])
    runner = fake_runner(ToyModel())
    assert run_epochs(hook, runner, 6) == pytest.approx([BUILT_RATE] * 2 + [0.] * 2 + [0.2] * 2)
    rates = [b.drop_path.drop_prob for s in runner.model.backbone.stages for b in s.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.2, 4).tolist())  # spread over blocks


def test_unwraps_model_wrappers():
    hook = DropPathWarmupHook(milestones=[(0, 0.), (1, 0.1)])
    runner = fake_runner(nn.DataParallel(ToyModel()))  # a registered mmengine MODEL_WRAPPER
    assert run_epochs(hook, runner, 2) == pytest.approx([0., 0.1])


def test_interpolates_by_iteration():
    hook = DropPathWarmupHook(milestones=[(0, 0.), (10, 0.1)], by_epoch=False,
                              interpolate=True)
    runner = fake_runner(ToyModel())
    hook.before_train(runner)
    hook.before_train_epoch(runner)  # ignored when counting iterations
    rates = []
    for it in range(0, 15, 5):
        runner.iter = it
        hook.before_train_iter(runner, it)
        rates.append(last_block_rate(runner.model.backbone))
    assert rates == pytest.approx([0., 0.05, 0.1])
    assert hook.rate_at(100) == pytest.approx(0.1)


def test_drop_path_warmup_refuses_models_and_loops_it_cannot_drive():
    hook = DropPathWarmupHook(milestones=[(0, 0.)])
    no_reset = nn.Module()
    no_reset.backbone = nn.Linear(2, 2)
    with pytest.raises(TypeError, match='Linear has no reset_drop_path'):
        hook.before_train(fake_runner(no_reset))
    with pytest.raises(AttributeError, match='needs a model with a .backbone'):
        hook.before_train(fake_runner(nn.Linear(2, 2)))

    class IterLoop(IterBasedTrainLoop):
        def __init__(self) -> None:  # no dataloader needed for the type check
            pass

    with pytest.raises(ValueError, match='by_epoch=False'):
        hook.before_train(fake_runner(ToyModel(), IterLoop()))


@pytest.mark.parametrize('milestones,match', [
    ([], 'non-empty'), ([(0, 0.1, 2)], 'pair'), ([(-1, 0.1)], '>= 0'), ([(1.5, 0.1)], '>= 0'),
    ([(0, 1.0)], r'\[0, 1\)'), ([(2, 0.), (2, 0.1)], 'increase strictly'),
])
def test_rejects_bad_milestones(milestones, match):
    with pytest.raises(ValueError, match=match):
        DropPathWarmupHook(milestones=milestones)


class RandomImages(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        return dict(inputs=torch.randn(3, TINY_INPUT, TINY_INPUT))


def test_real_runner_applies_schedule_from_config(tmp_path):
    """custom_hooks from a config-style dict, an iteration-based loop (as mmseg's)."""
    model = ToyModel()
    runner = Runner(
        model=model, work_dir=str(tmp_path),
        train_dataloader=dict(dataset=RandomImages(), batch_size=2,
                              sampler=dict(type='InfiniteSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=5),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        custom_hooks=[dict(type='DropPathWarmupHook', milestones=[(0, 0.), (2, 0.1), (4, 0.2)],
                           by_epoch=False)],
        default_hooks=dict(checkpoint=None, logger=None), default_scope='mmengine')
    runner.train()
    assert model.seen == pytest.approx([0., 0., 0.1, 0.1, 0.2])
