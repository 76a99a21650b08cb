"""Training hooks. ``import pvt_mm`` registers them in mmengine's root ``HOOKS`` registry, which
mmdet's and mmseg's fall back to, so configs can list them in ``custom_hooks``."""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import nn

__all__ = ['DropPathWarmupHook']


@HOOKS.register_module()
class DropPathWarmupHook(Hook):
    """Change the backbone's stochastic-depth rate during training.

    Calls ``model.backbone.reset_drop_path(rate)`` (PVT / PVTv2: the rate is spread linearly
    from 0 over the blocks) at the start of each epoch (``by_epoch=True``) or iteration.

    Args:
        milestones: ``(point, rate)`` pairs with strictly increasing points. From ``point``
            on (the number of epochs, or iterations, already trained: 0 is the start) the
            rate is ``rate``; before the first point the model keeps the rate it was built
            with. ``[(0, 0.), (4, 0.1)]`` trains epochs 0-3 without drop path, then with 0.1.
        by_epoch: points count epochs (default) or iterations. Iteration-based loops (mmseg)
            need ``by_epoch=False``.
        interpolate: ramp the rate linearly between consecutive milestones instead of
            stepping at them (after the last point the last rate stays).

    Example (config)::

        custom_hooks = [dict(type='DropPathWarmupHook', milestones=[(0, 0.), (4, 0.1)])]
    """

    priority = 'NORMAL'

    def __init__(self, milestones: Sequence[Sequence[float]], by_epoch: bool = True,
                 interpolate: bool = False) -> None:
        self.points, self.rates = self._parse(milestones)
        self.by_epoch = by_epoch
        self.interpolate = interpolate
        self._current: float | None = None

    @staticmethod
    def _parse(milestones: Sequence[Sequence[float]]) -> tuple[list[int], list[float]]:
        if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence) \
                or not milestones:
            raise ValueError('DropPathWarmupHook milestones must be a non-empty list of '
                             f'(epoch_or_iter, rate) pairs, got {milestones!r}')
        points, rates = [], []
        for pair in milestones:
            if not isinstance(pair, Sequence) or len(pair) != 2:
                raise ValueError(f'DropPathWarmupHook milestone {pair!r} is not an '
                                 '(epoch_or_iter, rate) pair')
            point, rate = pair
            if isinstance(point, bool) or not isinstance(point, int) or point < 0:
                raise ValueError(f'DropPathWarmupHook milestone point must be an integer '
                                 f'>= 0, got {point!r}')
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) \
                    or not 0 <= rate < 1:
                raise ValueError(f'DropPathWarmupHook rate must be in [0, 1), got {rate!r}')
            if points and point <= points[-1]:
                raise ValueError('DropPathWarmupHook milestone points must increase strictly, '
                                 f'got {[p for p, _ in milestones]}')
            points.append(point)
            rates.append(float(rate))
        return points, rates

    def rate_at(self, point: int) -> float | None:
        """The scheduled rate after ``point`` epochs/iterations (None: not scheduled yet)."""
        i = bisect_right(self.points, point) - 1
        if i < 0:
            return None
        if self.interpolate and i + 1 < len(self.points):
            p0, p1 = self.points[i], self.points[i + 1]
            r0, r1 = self.rates[i], self.rates[i + 1]
            return r0 + (r1 - r0) * (point - p0) / (p1 - p0)
        return self.rates[i]

    @staticmethod
    def _backbone(runner) -> nn.Module:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        backbone = getattr(model, 'backbone', None)
        if backbone is None:
            raise AttributeError(f'DropPathWarmupHook needs a model with a .backbone; '
                                 f'{type(model).__name__} has none')
        if not callable(getattr(backbone, 'reset_drop_path', None)):
            raise TypeError(f'DropPathWarmupHook: backbone {type(backbone).__name__} has no '
                            'reset_drop_path(rate) method; use a pvt_mm PVT/PVTv2 backbone or '
                            'remove the hook')
        return backbone

    def _apply(self, runner, point: int) -> None:
        rate = self.rate_at(point)
        if rate is None or rate == self._current:
            return
        self._backbone(runner).reset_drop_path(rate)
        if self._current is None or point in self.points:
            unit = 'epoch' if self.by_epoch else 'iter'
            print_log(f'DropPathWarmupHook: drop_path_rate={rate:g} from {unit} {point}',
                      logger='current')
        self._current = rate

    def before_train(self, runner) -> None:
        """Check the model and the loop before the first step; start from a clean state."""
        from mmengine.runner import IterBasedTrainLoop
        self._backbone(runner)
        if self.by_epoch and isinstance(runner.train_loop, IterBasedTrainLoop):
            raise ValueError('DropPathWarmupHook(by_epoch=True) in an iteration-based training '
                             'loop: epochs never advance; set by_epoch=False and give '
                             'milestones in iterations')
        self._current = None

    def before_train_epoch(self, runner) -> None:
        if self.by_epoch:
            self._apply(runner, runner.epoch)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if not self.by_epoch:
            self._apply(runner, runner.iter)
