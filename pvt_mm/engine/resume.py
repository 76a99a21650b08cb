"""Exact resume for epoch-based training: a killed job ends where an uninterrupted one would.

mmengine's ``EpochBasedTrainLoop`` resumes with the weights, optimizer and schedulers of the
checkpoint, but (1) the random states data augmentation and the model draw from continue
from wherever the new process happens to be, and (2) a checkpoint written inside an epoch
(``CheckpointHook(by_epoch=False)``) restarts that epoch from its first batch.
:class:`ExactResumeEpochBasedTrainLoop` (swapped in for the stock loop by
:func:`enable_exact_resume`) fixes both without touching the Runner:

- **Every random state is a pure function of the run's seed and its position**, so restoring
  the position restores the states. The main process re-seeds Python ``random``, NumPy's
  global generator and torch (CPU and CUDA) from ``(seed, epoch)`` at the start of each epoch
  and from ``(seed, iteration)`` at the start of each iteration. Each training sample is
  loaded and augmented under generators seeded from ``(seed, epoch, rank, batch, slot)``,
  in whichever process loads it (the main process or any dataloader worker; the main
  process's own states are put back afterwards), so workers, their number and
  ``persistent_workers`` no longer matter.
- **The sampler's position**: checkpoints record the epoch and the number of batches of it
  already trained (``checkpoint['meta']['exact_resume']``: plain ints, readable by
  ``torch.load(weights_only=True)`` with no allow-list) and the sampler's seed. On resume
  the batch sampler skips the trained batches' indices, so they are neither loaded nor
  augmented, and training continues at the next batch.

mmengine behaviour replaced: ``EpochBasedTrainLoop.run_epoch``/``run_iter`` (re-seeding,
the resume offset), the train dataloader's batch sampler (wrapped:
:class:`ExactResumeBatchSampler`) and its dataset's batch fetch (``__getitems__``, the hook
torch's DataLoader calls for a batch). ``Runner.resume`` itself is unchanged; a hook carries
the position into and out of checkpoints.

Limits: generators an object owns (a transform holding its own ``numpy.random.Generator``)
are neither seeded nor saved; state a hook or module keeps across iterations must be in the
checkpoint by its own means. Iteration-based loops keep mmengine's ``IterBasedTrainLoop``
(it replays the skipped batches through the dataloader: their draws recur, but they load). The random streams differ
from the stock loop's, so a run's numbers change once when this loop is swapped in.
"""
from __future__ import annotations

import copy
import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import DATA_SAMPLERS, LOOPS
from mmengine.runner import EpochBasedTrainLoop
from torch.utils.data import BatchSampler, DataLoader, get_worker_info

__all__ = ['ExactResumeBatchSampler', 'ExactResumeEpochBasedTrainLoop', 'ExactResumeHook',
           'SeededBatch', 'derive_seed', 'enable_exact_resume', 'seed_everything']

STOCK_LOOP = 'EpochBasedTrainLoop'
LOOP = 'ExactResumeEpochBasedTrainLoop'
META_KEY = 'exact_resume'
VERSION = 1
# a separate stream for each place that is seeded
_EPOCH, _ITER, _BATCH, _SAMPLE = 1, 2, 3, 4
_MASK64 = (1 << 64) - 1


def derive_seed(*entropy: int) -> int:
    """A well-mixed 63-bit seed from integers (``numpy.random.SeedSequence``; the count is
    appended, as SeedSequence alone gives ``(a, b)`` and ``(a, b, 0)`` the same state)."""
    words = np.random.SeedSequence([int(e) & _MASK64 for e in entropy]
                                   + [len(entropy) + 1]).generate_state(2)
    return (int(words[0]) << 32 | int(words[1])) >> 1


def seed_everything(seed: int, cuda: bool = True) -> None:
    """Seed Python ``random``, NumPy's global generator and torch's CPU generator (and every
    CUDA device's with ``cuda``: lazily, it does not initialise CUDA)."""
    random.seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])
    if cuda:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


class _ForkedRNG:
    """Run a block under freshly seeded CPU generators, then put the previous states back
    (in the main process; a dataloader worker's generators serve its samples only, so the
    copy, ~0.1 ms for NumPy's, is skipped there)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self._states = None
        if get_worker_info() is None:
            self._states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        seed_everything(self.seed, cuda=False)

    def __exit__(self, *exc: Any) -> None:
        if self._states is not None:
            py, np_state, torch_state = self._states
            random.setstate(py)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)


class SeededBatch(list):
    """A batch of dataset indices that carries the seed its samples are augmented with."""

    def __init__(self, indices: Sequence[int], seed: int) -> None:
        super().__init__(indices)
        self.seed = seed


class _SeededFetch:
    """Loads a batch for torch's DataLoader (installed as the dataset's ``__getitems__``):
    sample ``j`` of a :class:`SeededBatch` runs under generators seeded from the batch seed
    and ``j``, wherever it is loaded. Plain index lists load as before."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __call__(self, indices: Sequence[int]) -> list:
        if not isinstance(indices, SeededBatch):
            return [self.dataset[i] for i in indices]
        samples = []
        for slot, index in enumerate(indices):
            with _ForkedRNG(derive_seed(indices.seed, _SAMPLE, slot)):
                samples.append(self.dataset[index])
        return samples


@DATA_SAMPLERS.register_module()
class ExactResumeBatchSampler:
    """Wraps the train dataloader's batch sampler: seeds each batch from ``(seed, epoch,
    rank, batch index)`` and, in the epoch given to :meth:`begin_epoch`, skips the batches
    before ``start`` (only their indices are computed).

    Args:
        sampler: the index sampler (``DefaultSampler``, ...), as mmengine passes it.
        batch_size: images per batch, as mmengine passes it.
        batch_sampler: config of the batch sampler to wrap (e.g. mmdet's
            ``AspectRatioBatchSampler``); None: torch's ``BatchSampler``.
        drop_last: torch ``BatchSampler``'s ``drop_last`` (when ``batch_sampler`` is None).
    """

    def __init__(self, sampler: Any, batch_size: int, batch_sampler: dict | None = None,
                 drop_last: bool = False) -> None:
        if batch_sampler is None:
            self.inner = BatchSampler(sampler, batch_size, drop_last)
        else:
            self.inner = DATA_SAMPLERS.build(
                batch_sampler, default_args=dict(sampler=sampler, batch_size=batch_size))
        self.rank = get_rank()
        self.epoch, self.seed, self.start = 0, 0, 0

    @property
    def sampler(self) -> Any:
        """The wrapped index sampler (``DistSamplerSeedHook`` sets its epoch)."""
        return self.inner.sampler

    def begin_epoch(self, epoch: int, seed: int, start: int = 0) -> None:
        """The next iteration yields ``epoch``'s batches from index ``start`` on."""
        self.epoch, self.seed, self.start = epoch, seed, start

    def __iter__(self) -> Iterator[SeededBatch]:
        # a generator: this runs at the first batch, after the loop's begin_epoch
        epoch, seed, start, self.start = self.epoch, self.seed, self.start, 0
        for index, batch in enumerate(self.inner):
            if index >= start:
                yield SeededBatch(batch, derive_seed(seed, _BATCH, epoch, self.rank, index))

    def __len__(self) -> int:
        return len(self.inner)


class ExactResumeHook(Hook):
    """Writes the loop's position into every checkpoint and hands a loaded checkpoint's
    position to the loop (registered by :class:`ExactResumeEpochBasedTrainLoop`)."""

    priority = 'VERY_HIGH'

    def __init__(self, loop: ExactResumeEpochBasedTrainLoop) -> None:
        self.loop = loop

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault('meta', {})[META_KEY] = self.loop.position_record()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self.loop.loaded_meta = dict(checkpoint.get('meta') or {})


@LOOPS.register_module()
class ExactResumeEpochBasedTrainLoop(EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` that resumes bit-exactly, also from inside an epoch (see the
    module docstring). Same arguments; the train dataloader must be given as a config dict
    (as every mmdet/mmseg config does)."""

    def __init__(self, runner, dataloader: DataLoader | dict, *args, **kwargs) -> None:
        if not isinstance(dataloader, dict):
            raise TypeError(f'{LOOP} builds the train dataloader itself and needs its config '
                            f'dict, got a {type(dataloader).__name__}; use '
                            f"train_cfg.type='mmengine.{STOCK_LOOP}' for a prebuilt one")
        super().__init__(runner, _wrap_dataloader_cfg(dataloader), *args, **kwargs)
        self.batch_sampler: ExactResumeBatchSampler = self.dataloader.batch_sampler
        dataset = self.dataloader.dataset
        try:
            dataset.__getitems__ = _SeededFetch(dataset)
        except AttributeError as err:
            raise TypeError(f'{LOOP}: cannot install the seeded batch fetch on dataset '
                            f'{type(dataset).__name__} ({err})') from err
        self.loaded_meta: dict | None = None
        self._start_batch = 0  # where the next epoch starts (set on resume)
        self._next = (0, 0)  # (epoch, batch) the next iteration trains
        runner.register_hook(ExactResumeHook(self))

    # ------------------------------------------------------------------ checkpoints
    def position_record(self) -> dict:
        """What a checkpoint written now records (plain ints for ``weights_only`` loads)."""
        epoch, batch = self._next
        sampler_seed = getattr(self.batch_sampler.sampler, 'seed', None)
        return dict(version=VERSION, epoch=int(epoch), batch=int(batch),
                    epoch_length=len(self.dataloader),
                    sampler_seed=int(sampler_seed) if isinstance(sampler_seed, int) else None)

    def _resume_batch(self) -> int:
        """The batch of ``self._epoch`` to start at after ``Runner.resume`` (0: none)."""
        meta, self.loaded_meta = self.loaded_meta, None
        if not meta or self._iter == 0 or (meta.get('epoch'), meta.get('iter')) != (
                self._epoch, self._iter):
            return 0  # fresh start, or weights loaded with load_from: not a resume
        length = len(self.dataloader)
        record = meta.get(META_KEY)
        if record is None:
            batch = self._iter - self._epoch * length
            print_log(f'{LOOP}: the checkpoint has no exact-resume record (written by another '
                      f'loop); continuing at batch {batch} of epoch {self._epoch + 1}, but '
                      "that run's random streams are not reproduced", logger='current',
                      level=logging.WARNING)
            return batch if 0 <= batch <= length else 0
        if record.get('version') != VERSION or record['epoch'] != self._epoch:
            raise RuntimeError(f'{LOOP}: checkpoint position {record} does not match the '
                               f'resumed epoch {self._epoch} / iteration {self._iter}')
        batch = record['batch']
        if batch and record['epoch_length'] != length:
            raise ValueError(f'{LOOP}: the checkpoint was written after batch {batch} of an '
                             f"epoch of {record['epoch_length']} batches, but this config's "
                             f'epoch has {length}; resuming inside the epoch needs the same '
                             'dataset and batch size')
        sampler = self.batch_sampler.sampler
        if record.get('sampler_seed') is not None and hasattr(sampler, 'seed'):
            sampler.seed = record['sampler_seed']
        return batch

    # ------------------------------------------------------------------ loop
    def run(self) -> torch.nn.Module:
        self._start_batch = self._resume_batch()
        self._next = (self._epoch, self._start_batch)
        return super().run()

    def run_epoch(self) -> None:
        """One epoch from batch ``self._start_batch`` (0 except right after a resume)."""
        start, self._start_batch = self._start_batch, 0
        seed_everything(derive_seed(self.runner.seed, _EPOCH, self._epoch))
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        if start:
            print_log(f'{LOOP}: resuming epoch {self._epoch + 1} at batch {start + 1} of '
                      f'{len(self.dataloader)}; the {start} trained batches are skipped '
                      'without loading them', logger='current')
        self.batch_sampler.begin_epoch(self._epoch, self.runner.seed, start)
        for idx, data_batch in enumerate(self.dataloader, start):
            self.run_iter(idx, data_batch)
        self._next = (self._epoch + 1, 0)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1

    def run_iter(self, idx: int, data_batch: Sequence[dict]) -> None:
        """``EpochBasedTrainLoop.run_iter`` after re-seeding from the iteration number."""
        seed_everything(derive_seed(self.runner.seed, _ITER, self._iter))
        self.runner.call_hook('before_train_iter', batch_idx=idx, data_batch=data_batch)
        outputs = self.runner.model.train_step(data_batch,
                                               optim_wrapper=self.runner.optim_wrapper)
        self._next = (self._epoch, idx + 1)
        self.runner.call_hook('after_train_iter', batch_idx=idx, data_batch=data_batch,
                              outputs=outputs)
        self._iter += 1


def _wrap_dataloader_cfg(cfg: dict) -> dict:
    """The train dataloader config with its batch sampler wrapped in
    :class:`ExactResumeBatchSampler` (idempotent)."""
    cfg = copy.deepcopy(dict(cfg))
    inner = cfg.get('batch_sampler')
    if isinstance(inner, dict) and inner.get('type') in (ExactResumeBatchSampler,
                                                          ExactResumeBatchSampler.__name__):
        return cfg
    wrapper = dict(type=ExactResumeBatchSampler, batch_sampler=inner)
    if inner is None:  # DataLoader would have built BatchSampler(sampler, bs, drop_last)
        wrapper['drop_last'] = cfg.pop('drop_last', False)
    cfg['batch_sampler'] = wrapper
    return cfg


def enable_exact_resume(cfg: Config) -> bool:
    """Swap mmengine's ``EpochBasedTrainLoop`` (``train_cfg.type`` or ``by_epoch=True``) for
    :class:`ExactResumeEpochBasedTrainLoop`. ``'mmengine.EpochBasedTrainLoop'`` (scoped) keeps
    the stock loop. Returns whether the loop was swapped."""
    train_cfg = cfg.get('train_cfg')
    if not isinstance(train_cfg, dict):
        return False
    if train_cfg.get('type') == STOCK_LOOP:
        train_cfg['type'] = LOOP
    elif 'type' not in train_cfg and train_cfg.get('by_epoch'):
        train_cfg.pop('by_epoch')
        train_cfg['type'] = LOOP
    else:
        return train_cfg.get('type') == LOOP
    return True
