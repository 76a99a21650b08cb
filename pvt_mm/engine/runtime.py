"""Config reading, model building and runner set-up: the one place the tools, ``deploy``,
``visualization`` and ``analysis`` read mmdet / mmseg configs and build models from them.

- configs: :func:`read_config` (a file, ``--cfg-options`` checked and merged),
  :func:`read_model_config` (one that has a ``model.backbone``), :func:`load_config` (for a
  run: work_dir, launcher, device, the model checked before any data), :func:`config_scope` /
  :func:`task_scope` / :func:`use_scope`;
- models: :func:`build_from_config` (a detector / segmentor with random weights); backbones by
  variant name are :func:`pvt_mm.models.backbones.build_pvt`;
- runners: :func:`build_runner`.

Importing any pvt_mm module runs ``pvt_mm/__init__.py`` first, which registers the backbones
(whatever a config's ``custom_imports`` say); nothing here imports the facade again.

The runner set-up follows mmdet's and mmseg's own tools (same config handling, same Runner)
and adds:

- the task's scope (``mmdet`` or ``mmseg``) taken from the config's ``default_scope``;
- CPU-only machines: distributed runs use gloo, DDP without device ids and SyncBN as
  per-process BN, ``--amp`` as bfloat16 autocast (:mod:`pvt_mm.engine.cpu`);
- checkpoints are read safely (``weights_only=True``, the Runner-checkpoint allow-list scoped
  to each load), loaded strictly (``load_from_strict=False`` opts out) and written atomically
  (:mod:`pvt_mm.engine.checkpoint_io`);
- ``--cfg-options`` keys that the config does not have are refused with the nearest name.
"""
from __future__ import annotations

import copy
import difflib
import importlib
import inspect
import logging
import os.path as osp
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import torch
from mmengine.config import Config, ConfigDict
from mmengine.logging import MMLogger, print_log
from mmengine.registry import MODELS, DefaultScope
from mmengine.runner import Runner
from torch import nn

from ..loading.checkpoint import remove_stale_temp_files
from .checkpoint_io import (LAST_CHECKPOINT, STRICT_KEY, check_checkpoint_file, harden_runner,
                            latest_checkpoint, use_atomic_checkpoint_hook)
from .config_check import check_model_config, stock_config_hint
from .cpu import CPU_DIST_BACKEND, init_cpu_process_group
from .resume import enable_exact_resume

SCOPES = ('mmdet', 'mmseg')
DEFAULT_WRAPPER = 'MMDistributedDataParallel'
CPU_WRAPPER = 'CPUDistributedDataParallel'
CPU_AMP_WRAPPER = 'CPUAmpOptimWrapper'
AMP_WRAPPERS = ('AmpOptimWrapper', CPU_AMP_WRAPPER)
CPU_LAUNCHERS = ('none', 'pytorch')
# top-level keys that mmengine's Runner (or mmdet's/mmseg's tools, or pvt_mm) read even when
# the config file does not set them; any of them may be given with --cfg-options
RUNNER_KEYS = frozenset(inspect.signature(Runner.__init__).parameters) - {'self', 'cfg'} | {
    'model_wrapper_cfg', 'compile', 'runner_type', 'custom_imports', 'tta_model',
    'tta_pipeline', 'gpu_ids', 'dist_params', STRICT_KEY}
NEAR_CUTOFF = 0.8  # difflib ratio above which a missing nested key is taken for a typo


def check_cfg_options(cfg: Config, cfg_options: dict) -> None:
    """Refuse ``--cfg-options`` keys that would be silently ignored: a top-level key the
    config does not have (and no Runner reads), or a nested key missing where the config has
    a near-identical one (``optimzer`` for ``optimizer``). New nested keys are allowed."""
    for key in cfg_options:
        parts = str(key).split('.')
        known = set(cfg.keys()) | RUNNER_KEYS
        if parts[0] not in known:
            near = difflib.get_close_matches(parts[0], sorted(known), n=1, cutoff=0.5)
            hint = f'; did you mean {near[0]!r}?' if near else ''
            raise ValueError(f'--cfg-options {key}: the config has no top-level key '
                           f'{parts[0]!r}{hint}')
        node = cfg.get(parts[0])
        for i, part in enumerate(parts[1:], 1):
            if not isinstance(node, Mapping):
                break
            if part not in node:
                near = difflib.get_close_matches(part, [str(k) for k in node], n=1,
                                                 cutoff=NEAR_CUTOFF)
                if near:
                    raise ValueError(f'--cfg-options {key}: {".".join(parts[:i])} has no key '
                                   f'{part!r}; did you mean {near[0]!r}?')
                break
            node = node[part]


def read_config(path: str | Path, cfg_options: dict | None = None) -> Config:
    """``Config.fromfile`` with ``cfg_options`` merged; a missing file is named with the
    near matches in its folder."""
    path = Path(path)
    if not path.is_file():
        near = difflib.get_close_matches(path.name, [p.name for p in path.parent.glob('*.py')]
                                         if path.parent.is_dir() else [], n=3)
        hint = f'; did you mean {[str(path.parent / n) for n in near]}?' if near else ''
        hint = hint or stock_config_hint(str(path))
        raise FileNotFoundError(f'config file not found: {path}{hint}')
    try:
        cfg = Config.fromfile(str(path))
    except FileNotFoundError as e:  # a mistyped mmdet:: / mmseg:: base
        hint = stock_config_hint(str(e).split('"')[1] if str(e).count('"') >= 2 else str(e))
        if not hint:
            raise
        raise FileNotFoundError(f'{path}: {e}{hint}') from e
    if cfg_options:
        check_cfg_options(cfg, cfg_options)
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


def use_scope(scope: str) -> None:
    """Make ``scope`` mmengine's default scope (init_default_scope, without its warning when
    a tool switches between mmdet and mmseg models)."""
    current = DefaultScope.get_current_instance()
    if current is None or current.scope_name != scope:
        DefaultScope.get_instance(f'pvt_mm-{scope}-{time.perf_counter_ns()}', scope_name=scope)


def read_model_config(path: str | Path, cfg_options: dict | None = None) -> Config:
    """A detector / segmentor config (:func:`read_config`) that has a ``model.backbone``."""
    cfg = read_config(path, cfg_options)
    if 'model' not in cfg or 'backbone' not in cfg.model:
        raise ValueError(f'config {str(path)!r} has no model.backbone')
    return cfg


def build_from_config(cfg: Config, init: bool = False) -> nn.Module:
    """Detector / segmentor of ``cfg`` built in its scope, with random weights: the
    constructors' default ones, or with ``init`` the model's own ``init_weights`` (heads with
    their prior biases etc.) without the backbone's pretrained checkpoint."""
    use_scope(config_scope(cfg))
    if init:
        cfg = copy.deepcopy(cfg)
        cfg.model.backbone.pop('init_cfg', None)
    model = MODELS.build(cfg.model)
    if init:
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel('WARNING')  # init_weights logs every parameter's initialiser
        try:
            model.init_weights()
        finally:
            logger.setLevel(level)
    return model


def adapt_to_device(cfg: Config) -> None:
    """Without CUDA: gloo for distributed runs, the CPU DDP wrapper, and a clear error for
    launchers that need GPUs (mmengine's slurm/mpi set-up calls ``torch.cuda``)."""
    if torch.cuda.is_available():
        return
    wrapper = cfg.get('optim_wrapper')
    if wrapper is not None and wrapper.get('type') == 'AmpOptimWrapper':
        # configs that train in mixed precision (the official "_fp16" recipes): mmengine's
        # AmpOptimWrapper refuses to build without an accelerator; CPU autocast is bfloat16
        wrapper.type = CPU_AMP_WRAPPER
        print_log(f'{wrapper.get("dtype") or "fp16"} AmpOptimWrapper without CUDA: training '
                  'under bfloat16 autocast on the CPU', logger='current')
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
    CLI > config > ``./work_dirs/<config name>``), check its scope and its model."""
    cfg = read_config(config)
    cfg.launcher = launcher
    if cfg_options:
        check_cfg_options(cfg, cfg_options)
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = str(work_dir)
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(str(config)))[0])
    task_scope(cfg)
    adapt_to_device(cfg)
    check_model_config(cfg)  # backbone arguments and neck/head channels, before any data
    enable_exact_resume(cfg)  # epoch-based loops resume bit-exactly (pvt_mm.engine.resume)
    return cfg


def set_resume(cfg: Config, resume: str | None) -> None:
    """``'auto'``: resume from the work_dir's latest checkpoint, or, when the work dir has
    none, say so and start from scratch; a path: resume from it (missing: an error)."""
    if resume is None:
        return
    if resume != 'auto':
        check_checkpoint_file(resume, '--resume checkpoint')
        cfg.resume, cfg.load_from = True, resume
        return
    marker = osp.join(cfg.work_dir, LAST_CHECKPOINT)
    if osp.isdir(cfg.work_dir):
        remove_stale_temp_files(cfg.work_dir)  # a save killed part-way
    latest = latest_checkpoint(cfg.work_dir)
    if latest is None:
        loaded = f' (loading load_from={cfg.load_from})' if cfg.get('load_from') else ''
        print_log(f'--resume: no checkpoint found in {cfg.work_dir} (no last_checkpoint '
                  f'file); starting from scratch{loaded}', logger='current',
                  level=logging.WARNING)
        cfg.resume = False
        return
    check_checkpoint_file(latest, f'--resume: {marker} names a checkpoint that is')
    cfg.resume, cfg.load_from = True, latest


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


def _fresh_visualizer(cfg: Config) -> None:
    """mmengine keeps visualizers by name per process and hands a later runner asking for the
    same name (mmdet's and mmseg's runtimes all say ``'visualizer'``) the earlier one, with
    that run's save_dir, while hooks pick the newest instance of any class: a second runner
    in one process (the demo, a notebook, tests) would log and draw into the first one's. Give
    each runner built here a name no visualizer has yet."""
    vis = cfg.get('visualizer')
    if not isinstance(vis, Mapping):
        return
    from mmengine.visualization import Visualizer
    name = vis.get('name')
    if name and name in Visualizer._instance_dict:
        vis['name'] = f'{name}_{uuid.uuid4().hex[:8]}'


def build_runner(cfg: Config) -> Runner:
    """The Runner for ``cfg`` (``runner_type`` honoured), after the CPU process group is in
    place, with safe and strict checkpoint loading and atomic checkpoint saving
    (:func:`~pvt_mm.engine.checkpoint_io.harden_runner`)."""
    if cfg.get('load_from'):
        check_checkpoint_file(cfg.load_from, 'load_from checkpoint')
    use_atomic_checkpoint_hook(cfg)
    _fresh_visualizer(cfg)
    if cfg.get('launcher', 'none') == 'pytorch' and not torch.cuda.is_available():
        init_cpu_process_group(cfg.env_cfg.get('dist_cfg'))
    if 'runner_type' in cfg:
        registry = importlib.import_module(f'{task_scope(cfg)}.registry').RUNNERS
        runner = registry.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    return harden_runner(runner, strict=cfg.get(STRICT_KEY, True))
