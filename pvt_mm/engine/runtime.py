"""Runner set-up shared by ``tools/train.py``, ``tools/test.py``, ``tools/demo.py`` and tests.

It follows mmdet's and mmseg's own tools (same config handling, same Runner) and adds:

- the task's scope (``mmdet`` or ``mmseg``) taken from the config's ``default_scope``;
- CPU-only machines: distributed runs use gloo, DDP without device ids and SyncBN as
  per-process BN, ``--amp`` as bfloat16 autocast (:mod:`pvt_mm.engine.cpu`);
- torch >= 2.6 loads checkpoints with ``weights_only=True``; :func:`allow_runner_checkpoints`
  allow-lists exactly the non-tensor globals mmengine's checkpoints hold, so ``--resume``
  works with the safe loader left on.
"""
from __future__ import annotations

import difflib
import importlib
import logging
import os.path as osp
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log
from mmengine.runner import Runner

from .cpu import CPU_DIST_BACKEND, init_cpu_process_group

SCOPES = ('mmdet', 'mmseg')
DEFAULT_WRAPPER = 'MMDistributedDataParallel'
CPU_WRAPPER = 'CPUDistributedDataParallel'
CPU_AMP_WRAPPER = 'CPUAmpOptimWrapper'
AMP_WRAPPERS = ('AmpOptimWrapper', CPU_AMP_WRAPPER)
CPU_LAUNCHERS = ('none', 'pytorch')
# HistoryBuffers keep logged values (mmengine turns them into Python numbers first) as
# float64 arrays and their counts as int64 ones
NUMPY_LOG_DTYPES = (np.float64, np.int64)


def _checkpoint_globals() -> list[Any]:
    """The non-tensor globals in mmengine Runner checkpoints (found with
    ``torch.serialization.get_unsafe_globals_in_checkpoint``): the message hub's
    ``HistoryBuffer`` logs, which hold numpy arrays and scalars, and reference their statistic
    methods as ``getattr(HistoryBuffer, 'mean')`` etc. (so ``builtins.getattr``; what it
    returns still cannot be called by the loader unless it is allow-listed too). numpy
    dtypes are rebuilt through their classes (``numpy.dtypes.Float64DType``, ...).
    Checked on detection and segmentation checkpoints of epoch- and iteration-based runs."""
    from mmengine.logging.history_buffer import HistoryBuffer
    multiarray = (getattr(np, '_core', None) or np.core).multiarray  # numpy 2 renamed core
    dtype_classes = [type(np.dtype(t)) for t in NUMPY_LOG_DTYPES]
    return [HistoryBuffer, getattr, multiarray._reconstruct, multiarray.scalar, np.ndarray,
            np.dtype, *dtype_classes]


def allow_runner_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` (torch >= 2.6 default) read mmengine Runner
    checkpoints, by allow-listing exactly the globals they contain. Idempotent."""
    torch.serialization.add_safe_globals(_checkpoint_globals())


def read_config(path: str | Path, cfg_options: dict | None = None) -> Config:
    """``Config.fromfile`` with ``cfg_options`` merged; a missing file is named with the
    near matches in its folder."""
    path = Path(path)
    if not path.is_file():
        near = difflib.get_close_matches(path.name, [p.name for p in path.parent.glob('*.py')]
                                         if path.parent.is_dir() else [], n=3)
        hint = f'; did you mean {[str(path.parent / n) for n in near]}?' if near else ''
        raise FileNotFoundError(f'config file not found: {path}{hint}')
    cfg = Config.fromfile(str(path))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def config_scope(cfg: Config) -> str:
    """``'mmdet'`` or ``'mmseg'``: the config's ``default_scope``, checked."""
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f'{cfg.filename}: default_scope is {scope!r}; these tools run '
                         f'MMDetection or MMSegmentation configs (default_scope in {SCOPES})')
    return scope


def task_scope(cfg: Config) -> str:
    """:func:`config_scope`, with that package's modules registered."""
    scope = config_scope(cfg)
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    return scope


def adapt_to_device(cfg: Config) -> None:
    """Without CUDA: gloo for distributed runs, the CPU DDP wrapper, and a clear error for
    launchers that need GPUs (mmengine's slurm/mpi set-up calls ``torch.cuda``)."""
    if torch.cuda.is_available():
        return
    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    env_cfg.setdefault('dist_cfg', ConfigDict())['backend'] = CPU_DIST_BACKEND
    launcher = cfg.get('launcher', 'none')
    if launcher not in CPU_LAUNCHERS:
        raise ValueError(f'--launcher {launcher} needs CUDA; on CPU start distributed runs '
                         'with torchrun (tools/dist_train.sh, --launcher pytorch)')
    if launcher != 'none':
        wrapper = cfg.get('model_wrapper_cfg') or ConfigDict()
        if wrapper.get('type', DEFAULT_WRAPPER) == DEFAULT_WRAPPER:
            cfg.model_wrapper_cfg = ConfigDict(wrapper, type=CPU_WRAPPER)


def load_config(config: str | Path, cfg_options: dict | None = None,
                work_dir: str | None = None, launcher: str = 'none') -> Config:
    """Read a config the way mmdet's/mmseg's tools do (``--cfg-options`` merged, work_dir from
    CLI > config > ``./work_dirs/<config name>``), check its scope, register pvt_mm."""
    cfg = read_config(config)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = str(work_dir)
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(str(config)))[0])
    task_scope(cfg)
    import pvt_mm  # noqa: F401  registers the backbones, whatever the config imports
    adapt_to_device(cfg)
    return cfg


def set_resume(cfg: Config, resume: str | None) -> None:
    """``'auto'``: resume from the work_dir's latest checkpoint; a path: resume from it."""
    if resume is None:
        return
    cfg.resume = True
    if resume == 'auto':
        cfg.load_from = None
    elif not osp.isfile(resume):
        raise FileNotFoundError(f'--resume checkpoint not found: {resume}')
    else:
        cfg.load_from = resume


def enable_amp(cfg: Config) -> None:
    """Mixed precision: mmengine's ``AmpOptimWrapper`` (fp16, dynamic loss scale) with CUDA,
    bfloat16 autocast (:class:`~pvt_mm.engine.cpu.CPUAmpOptimWrapper`) without."""
    wrapper = cfg.optim_wrapper
    if wrapper.get('type') in AMP_WRAPPERS:
        print_log('AMP training is already enabled in your config.', logger='current',
                  level=logging.WARNING)
        return
    if torch.cuda.is_available():
        wrapper.type, wrapper.loss_scale = 'AmpOptimWrapper', 'dynamic'
    else:
        wrapper.type = CPU_AMP_WRAPPER
        print_log('--amp without CUDA: training under bfloat16 autocast on the CPU',
                  logger='current')


def build_runner(cfg: Config) -> Runner:
    """The Runner for ``cfg`` (``runner_type`` honoured), after the CPU process group and the
    checkpoint allow-list are in place."""
    allow_runner_checkpoints()
    if cfg.get('launcher', 'none') == 'pytorch' and not torch.cuda.is_available():
        init_cpu_process_group(cfg.env_cfg.get('dist_cfg'))
    if 'runner_type' in cfg:
        registry = importlib.import_module(f'{task_scope(cfg)}.registry').RUNNERS
        return registry.build(cfg)
    return Runner.from_cfg(cfg)
