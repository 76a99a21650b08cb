"""Offline, safe and strict loading of pretrained PVT weights."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from mmengine.logging import print_log
from torch import nn

from .convert import CheckpointError, _listing, convert_pvt_checkpoint

__all__ = ['resolve_checkpoint', 'read_checkpoint', 'load_pretrained', 'check_state_dict']

REMOTE_SCHEMES = ('http', 'https')


def hub_checkpoint_dir() -> Path:
    """Where torch (and mmengine) cache downloaded checkpoints: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / 'checkpoints'


def resolve_checkpoint(source: str | os.PathLike) -> Path:
    """A local path, or a release URL / bare file name looked up in the torch hub cache.

    Nothing is downloaded: a missing file raises FileNotFoundError saying where to put it.
    """
    text = os.fspath(source)
    scheme = urlparse(text).scheme
    if '://' in text and scheme not in REMOTE_SCHEMES:
        raise FileNotFoundError(f'checkpoint {text!r}: the {scheme}:// scheme is not supported; '
                                'give a local path or a http(s) release URL')
    name = Path(urlparse(text).path).name if scheme in REMOTE_SCHEMES else Path(text).name
    candidates = [] if scheme in REMOTE_SCHEMES else [Path(text).expanduser()]
    candidates.append(hub_checkpoint_dir() / name)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f'pretrained checkpoint {text!r} not found (nothing is downloaded). Put {name} at '
        f'{hub_checkpoint_dir() / name} (the torch hub cache; TORCH_HOME moves it), or point '
        f'the config at a local file: --cfg-options model.backbone.init_cfg.checkpoint=/path/'
        f'to/{name}')


def read_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        if 'global' in str(e).lower():  # a class/function reference: code, not weights
            raise CheckpointError(
                f'{path} references Python objects other than tensors and plain containers and '
                f'is not loaded (torch.load weights_only=True): {_first_line(e)}') from e
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint (corrupt, '
                              f'truncated, or not written by torch.save): {_first_line(e)}') from e
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f'{path} is not a readable PyTorch checkpoint (corrupt or '
                              f'truncated?): {e}') from e


def _first_line(e: Exception) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    detail = [ln for ln in lines if 'GLOBAL' in ln or 'Unsupported' in ln]
    return (detail or lines or [type(e).__name__])[0].strip()


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Raise CheckpointError naming missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}'
              for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing key(s): {_listing(missing)}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected key(s): {_listing(unexpected)}')
    if shapes:
        problems.append(f'{len(shapes)} shape mismatch(es): {_listing(shapes)}')
    if problems:
        arch = getattr(model, 'arch', None)
        raise CheckpointError(f'checkpoint does not match {type(model).__name__}'
                              f'{f" ({arch})" if arch else ""}: ' + '; '.join(problems))


def load_pretrained(model: nn.Module, source: str | os.PathLike, prefix: str | None = None
                    ) -> None:
    """Resolve, read safely, convert and load ``source`` into ``model`` with ``strict=True``."""
    path = resolve_checkpoint(source)
    state_dict = convert_pvt_checkpoint(read_checkpoint(path), prefix=prefix)
    check_state_dict(model, state_dict)
    model.load_state_dict(state_dict, strict=True)
    print_log(f'loaded pretrained {type(model).__name__} weights from {path}', logger='current')
