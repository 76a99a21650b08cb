"""Safe, strict and atomic checkpoint I/O for the tools' mmengine Runner.

mmengine 0.10.7 behaviour overridden here, for runners built by
:func:`pvt_mm.engine.runtime.build_runner` only (nothing process-wide):

- ``Runner.load_checkpoint`` (used by ``load_from``, ``--resume`` and ``tools/test.py``)
  reads through :func:`pvt_mm.loading.checkpoint.read_checkpoint` (``weights_only`` with the
  Runner-checkpoint allow-list of that one load; ``.safetensors`` by content; errors
  name the file) and, unless the config sets ``load_from_strict=False``, refuses a state dict
  that does not match the model instead of warning and running with random weights;
- ``Runner.resume`` names a file without training state (weights only) instead of a bare
  ``KeyError: 'meta'``;
- ``Runner.save_checkpoint`` writes to a temporary file beside the target and renames it into
  place once complete (:func:`pvt_mm.loading.checkpoint.atomic_path`);
- :class:`AtomicCheckpointHook` replaces the stock ``CheckpointHook``: with
  ``max_keep_ckpts`` it deletes the oldest checkpoint only after the new one is complete, and
  writes ``last_checkpoint`` atomically.
"""
from __future__ import annotations

import logging
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmengine.config import Config, ConfigDict
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint_to_model

from ..loading.checkpoint import (CheckpointError, atomic_path, hub_checkpoint_dir, model_name,
                                  read_checkpoint, remove_stale_temp_files,
                                  state_dict_problems)
from ..loading.state_check import check_dense

__all__ = ['AtomicCheckpointHook', 'harden_runner', 'use_atomic_checkpoint_hook',
           'read_runner_checkpoint', 'check_checkpoint_file', 'check_model_checkpoint',
           'latest_checkpoint', 'STRICT_KEY']

STRICT_KEY = 'load_from_strict'  # config key: False allows intentional partial loads
STOCK_HOOK = 'CheckpointHook'
REMOTE = re.compile(r'^[a-z][a-z0-9+.-]*://', re.I)


def check_checkpoint_file(path: str | os.PathLike, what: str) -> None:
    """Fail early, naming ``path``, when a local checkpoint is missing or a directory."""
    text = os.fspath(path)
    if REMOTE.match(text):
        return
    if os.path.isdir(text):
        raise CheckpointError(f'{what} {text} is a directory, not a checkpoint file')
    if not os.path.isfile(text):
        raise FileNotFoundError(f'{what} not found: {text}')


LAST_CHECKPOINT = 'last_checkpoint'


def latest_checkpoint(work_dir: str | os.PathLike) -> str | None:
    """The checkpoint ``work_dir/last_checkpoint`` names, or None: a relative name (what
    :class:`AtomicCheckpointHook` writes) is taken relative to the work dir; an absolute one
    (stock mmengine) that no longer exists, because the work dir was copied or moved, is
    looked for under the same name in the work dir."""
    marker = Path(work_dir) / LAST_CHECKPOINT
    if not marker.is_file():
        return None
    name = marker.read_text().strip()
    if not name:
        return None
    path = Path(name)
    if not path.is_absolute():
        return str(Path(work_dir) / path)
    moved = Path(work_dir) / path.name
    if not path.exists() and moved.is_file():
        print_log(f'{marker} names {path}, which does not exist; using {moved} (the work dir '
                  'was moved or copied)', logger='current')
        return str(moved)
    return str(path)


def _local_copy(url: str) -> Path:
    """A remote checkpoint as a local file: http(s) in the torch hub cache (downloaded there
    once, as mmengine's ``load_from_http`` does); other mmengine schemes into a temporary
    file. It is then read like any local file."""
    import tempfile
    from urllib.parse import urlparse
    if urlparse(url).scheme in ('http', 'https'):
        import torch
        target = hub_checkpoint_dir() / Path(urlparse(url).path).name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(target), progress=False)
        return target
    from mmengine.fileio import get
    data = get(url)
    with tempfile.NamedTemporaryFile(suffix='.pth', delete=False) as f:
        f.write(data)
    return Path(f.name)


def read_runner_checkpoint(filename: str, map_location: Any = 'cpu') -> Mapping[str, Any]:
    """A checkpoint through :func:`read_checkpoint` (a remote one from its local copy,
    :func:`_local_copy`); anything but a checkpoint dict raises CheckpointError."""
    if REMOTE.match(str(filename)):
        local = _local_copy(str(filename))
        try:
            checkpoint = read_checkpoint(local, map_location=map_location)
        finally:
            if local.parent != hub_checkpoint_dir():  # a temporary copy
                local.unlink(missing_ok=True)
    else:
        check_checkpoint_file(filename, 'checkpoint')
        checkpoint = read_checkpoint(filename, map_location=map_location)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f'{filename} holds a {type(checkpoint).__name__}, not a '
                              'checkpoint dict')
    return checkpoint


def _revised_state_dict(checkpoint: Mapping[str, Any], revise_keys: list) -> dict[str, Any]:
    sd = checkpoint.get('state_dict', checkpoint)
    for pattern, replacement in revise_keys:
        sd = {re.sub(pattern, replacement, k): v for k, v in sd.items()}
    return dict(sd)


def _describe_model(model: Any) -> str:
    backbone = getattr(model, 'backbone', None)
    inner = f', backbone {model_name(backbone)}' if backbone is not None else ''
    return f'{type(model).__name__}{inner}'


def check_model_checkpoint(model: Any, checkpoint: Mapping[str, Any], filename: Any,
                           strict: bool = True,
                           revise_keys: list = [(r'^module\.', '')]  # noqa: B006
                           ) -> None:
    """Compare the checkpoint's state dict with ``model``'s: a mismatch raises
    CheckpointError naming the file, the model, the backbone variant and the first missing,
    unexpected and mis-shaped keys (``strict=False``: a warning, for intentional partial
    loads); a value without dense data (meta, sparse, quantized) always raises."""
    expected, state_dict = model.state_dict(), _revised_state_dict(checkpoint, revise_keys)
    check_dense(state_dict, filename, expected)  # strict or not: never a silent random init
    problems = state_dict_problems(expected, state_dict)
    if not problems:
        return
    summary = (f'{filename} does not match the model ({_describe_model(model)}): '
               + '; '.join(problems))
    if strict:
        raise CheckpointError(f'{summary}. To load only the matching weights on purpose, '
                              f'set {STRICT_KEY}=False (--cfg-options {STRICT_KEY}=False)')
    print_log(f'{summary} ({STRICT_KEY}=False: loading the matching weights only)',
              logger='current', level=logging.WARNING)


def _load_checkpoint_method(self: Runner, filename: str, map_location: Any = 'cpu',
                            strict: bool | None = None,
                            revise_keys: list = [(r'^module\.', '')]  # noqa: B006 (mmengine's)
                            ) -> Mapping[str, Any]:
    """``Runner.load_checkpoint`` with the safe reader and, by default, a strict key check
    (``strict=None``: the config's ``load_from_strict``, default True)."""
    checkpoint = read_runner_checkpoint(filename, map_location)
    self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
    model = self.model.module if is_model_wrapper(self.model) else self.model
    strict = self._pvt_strict_load if strict is None else strict
    check_model_checkpoint(model, checkpoint, filename, strict, revise_keys)
    _load_checkpoint_to_model(model, checkpoint, strict=False, revise_keys=revise_keys)
    self._has_loaded = True
    self.logger.info(f'Load checkpoint from {filename}')
    return checkpoint


def _atomic_save_method(original: Any) -> Any:
    def save_checkpoint(self: Runner, out_dir: str, filename: str, *args: Any, **kwargs: Any
                        ) -> None:
        """``Runner.save_checkpoint`` into a temporary file, renamed into place when whole."""
        backend = get_file_backend(out_dir, backend_args=kwargs.get('backend_args'))
        if not is_main_process() or not isinstance(backend, LocalBackend):
            return original(out_dir, filename, *args, **kwargs)
        with atomic_path(Path(out_dir) / filename) as tmp:
            original(str(tmp.parent), tmp.name, *args, **kwargs)
    return save_checkpoint


RESUME_KEYS = ('meta', 'epoch', 'iter', 'message_hub')


def _named_resume(original: Any) -> Any:
    def resume(self: Runner, filename: str, *args: Any, **kwargs: Any) -> None:
        """``Runner.resume``; a checkpoint without the training state is named as such."""
        try:
            return original(filename, *args, **kwargs)
        except KeyError as e:
            if e.args and e.args[0] in RESUME_KEYS:
                raise CheckpointError(
                    f'{filename} has no {e.args[0]!r} entry: it holds weights, not the training '
                    'state --resume needs (a checkpoint written by tools/train.py); to start '
                    'from its weights use load_from') from None
            raise
    return resume


def harden_runner(runner: Runner, strict: bool = True) -> Runner:
    """Give this one runner the safe, strict ``load_checkpoint``, the atomic
    ``save_checkpoint`` and a ``resume`` that names a weights-only file (instance attributes:
    its class and other runners are unchanged)."""
    runner._pvt_strict_load = bool(strict)
    runner.load_checkpoint = types.MethodType(_load_checkpoint_method, runner)
    runner.resume = types.MethodType(_named_resume(runner.resume), runner)
    runner.save_checkpoint = types.MethodType(_atomic_save_method(runner.save_checkpoint),
                                              runner)
    return runner


def use_atomic_checkpoint_hook(cfg: Config) -> None:
    """Swap the stock ``CheckpointHook`` of ``default_hooks`` for :class:`AtomicCheckpointHook`
    (same arguments); a config without a checkpoint entry gets mmengine's default one."""
    hooks = cfg.get('default_hooks')
    if hooks is None:
        hooks = cfg.default_hooks = ConfigDict()
    if 'checkpoint' not in hooks:
        hooks['checkpoint'] = ConfigDict(type=STOCK_HOOK, interval=1)  # mmengine's default
    hook = hooks['checkpoint']
    if isinstance(hook, Mapping) and hook.get('type') in (STOCK_HOOK, CheckpointHook):
        hook['type'] = AtomicCheckpointHook.__name__


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` that never loses the last complete checkpoint: the new
    one is written (atomically, by the runner) before the oldest is deleted, and
    ``last_checkpoint`` is replaced atomically after the new file is complete."""

    def _save_checkpoint_with_step(self, runner: Runner, step: int, meta: dict) -> None:
        stale = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                stale = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        ckpt_filename = self.filename_tmpl.format(step)
        if is_main_process() and isinstance(self.file_backend, LocalBackend):
            remove_stale_temp_files(self.out_dir)  # left by a save that was killed part-way
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, ckpt_filename, self.file_client_args,
            save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
            meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        with atomic_path(Path(runner.work_dir) / LAST_CHECKPOINT) as tmp:
            tmp.write_text(self._relative_to_work_dir(runner, self.last_ckpt))
        if stale is not None and stale != step:  # only now that the new one is complete
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(stale))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # deepspeed checkpoints are directories
                self.file_backend.rmtree(path)

    @staticmethod
    def _relative_to_work_dir(runner: Runner, path: str) -> str:
        """``path`` relative to the work dir when it lies inside it (a copied or moved work
        dir still resumes), else as it is."""
        try:
            return str(Path(path).resolve().relative_to(Path(runner.work_dir).resolve()))
        except ValueError:
            return str(path)
