"""Config-level checks run when the tools build a config, before any data is loaded:

- :func:`check_model_config`: a pvt_mm backbone's arguments (it is built on the meta device,
  so every construction check runs, nothing is allocated or downloaded) and the channels the
  neck (or, without a neck, mmseg's decode / auxiliary heads) expect from it;
- :func:`check_data_config`: the annotation files and image folders of the datasets the run
  will read.
"""
from __future__ import annotations

import os.path as osp
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from mmengine.config import Config
from mmengine.registry import MODELS

from ..arch import OFFICIAL_ALIASES
from ..models.backbones import PVT, PVTv2

DATA_DOC = 'README.md#data-preparation'
LOADERS = {'train': ('train_dataloader', 'val_dataloader'), 'test': ('test_dataloader',)}
HEADS = ('decode_head', 'auxiliary_head')


def _pvt_class(type_name: Any) -> Any:
    """The pvt_mm class or official-name builder registered as ``type_name``, else None."""
    if isinstance(type_name, type) and issubclass(type_name, (PVT, PVTv2)):
        return type_name
    if not isinstance(type_name, str):
        return None
    name = type_name.rsplit('.', 1)[-1]  # 'mmdet.PVTv2' -> 'PVTv2'
    if name in ('PVT', 'PVTv2') or name in OFFICIAL_ALIASES:
        return MODELS.get(name)
    return None


def backbone_out_channels(backbone: Mapping[str, Any]) -> tuple[tuple[int, ...], str] | None:
    """Build a pvt_mm backbone config on the meta device (all argument checks, no memory, no
    checkpoint read) -> (its out_channels, a description); None for other backbones."""
    build = _pvt_class(backbone.get('type'))
    if build is None:
        return None
    kwargs = {k: v for k, v in backbone.items() if k not in ('type', '_delete_')}
    with torch.device('meta'):
        model = build(**kwargs)
    desc = (f'{type(model).__name__} arch {model.arch_name!r}, out_indices '
            f'{model.out_indices}')
    return model.out_channels, desc


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) \
        else [value]


def _check_neck(neck: Mapping[str, Any], out: tuple[int, ...], desc: str) -> None:
    if 'in_channels' not in neck:
        return
    chans = neck['in_channels']
    if isinstance(chans, int) and len(out) > 1:
        return  # a neck with one in_channels for every level: nothing to compare
    if _as_list(chans) != list(out):
        raise ValueError(
            f'model.neck ({neck.get("type")}) in_channels {_as_list(chans)} do not match the '
            f"backbone's out_channels {list(out)} ({desc}): set "
            f'model.neck.in_channels={list(out)} or change the backbone\'s out_indices')


def _check_head(key: str, head: Mapping[str, Any], out: tuple[int, ...], desc: str) -> None:
    if 'in_channels' not in head:
        return
    chans, index = _as_list(head['in_channels']), _as_list(head.get('in_index', -1))
    bad = len(chans) != len(index) or any(
        not isinstance(i, int) or not -len(out) <= i < len(out) for i in index)
    expected = None if bad else [out[i] for i in index]
    if bad or chans != expected:
        raise ValueError(
            f'model.{key} ({head.get("type")}) in_channels {chans} with in_index {index} do '
            f"not match the backbone's out_channels {list(out)} ({desc})"
            + (f': at those indices they are {expected}' if expected else
               f': in_index must pick {len(chans)} of the {len(out)} backbone outputs'))


def check_model_config(cfg: Config | Mapping[str, Any]) -> None:
    """For a model with a pvt_mm backbone: check the backbone's arguments and the channels its
    consumers expect; raise ValueError/TypeError naming both channel lists. Others: no-op."""
    model = cfg.get('model')
    if not isinstance(model, Mapping) or not isinstance(model.get('backbone'), Mapping):
        return
    found = backbone_out_channels(model['backbone'])
    if found is None:
        return
    out, desc = found
    neck = model.get('neck')
    if neck:
        first = neck[0] if isinstance(neck, Sequence) and not isinstance(neck, Mapping) \
            else neck
        if isinstance(first, Mapping):
            _check_neck(first, out, desc)
        return  # heads read the neck's outputs
    for key in HEADS:
        for head in _as_list(model.get(key)):
            if isinstance(head, Mapping):
                _check_head(key, head, out, desc)


def _datasets(cfg: Any) -> Iterator[Mapping[str, Any]]:
    """A dataset config and the ones it wraps (RepeatDataset, ConcatDataset, ...)."""
    if not isinstance(cfg, Mapping):
        return
    yield cfg
    yield from _datasets(cfg.get('dataset'))
    for inner in _as_list(cfg.get('datasets') or []):
        yield from _datasets(inner)


def _local(root: str | None, path: str) -> str | None:
    if '://' in path or (root and '://' in root):
        return None  # a remote backend (s3://, http://): not checked
    return path if osp.isabs(path) or not root else osp.join(root, path)


def check_data_config(cfg: Config | Mapping[str, Any], mode: str) -> None:
    """Raise FileNotFoundError (the missing path and a pointer to the README's data section)
    when a dataset the run will read lacks its annotation file or image folder.

    ``mode``: ``'train'`` (train and, when configured, val loaders) or ``'test'``. A dataset
    without an ``ann_file`` (mmseg's ADE20K, folders of images and masks) has its
    ``data_prefix`` folders checked.
    """
    if mode not in LOADERS:
        raise ValueError(f'mode must be one of {sorted(LOADERS)}, got {mode!r}')
    for loader in LOADERS[mode]:
        if loader == 'val_dataloader' and not cfg.get('val_cfg'):
            continue
        spec = cfg.get(loader)
        if not isinstance(spec, Mapping):
            continue
        for ds in _datasets(spec.get('dataset')):
            ann = ds.get('ann_file')
            root = ds.get('data_root') or None
            prefixes = ds.get('data_prefix') or {}
            targets = [('annotation file', ann)] if ann and isinstance(ann, str) else []
            targets += [(f'{key} folder', p) for key, p in prefixes.items()
                        if isinstance(p, str) and p]
            for what, rel in targets:
                path = _local(root, rel)
                if path is not None and not osp.exists(path):
                    key = 'ann_file' if what.startswith('ann') else 'data_prefix'
                    raise FileNotFoundError(
                        f'{loader}: the dataset\'s {what} {path} does not exist '
                        f'(data_root={root!r}, {key}={rel!r}); see {DATA_DOC} for where to '
                        'put the data')


def stock_config_hint(name: str) -> str:
    """For a missing ``pkg::folder/file.py`` (or the installed path mmengine names for it):
    ``'; did you mean pkg::...?'`` with the package's configs nearest to it (difflib over
    the folder's files, else over all), or ``''``."""
    import difflib
    import re
    from pathlib import Path
    match = re.search(r'(\w+)::(.+)$', name) or re.search(
        r'/(mmdet|mmseg)/\.mim/configs/(.+)$', name)
    if not match:
        return ''
    package, rel = match.groups()
    try:
        from mmengine.utils import get_installed_path
        root = Path(get_installed_path(package)) / '.mim' / 'configs'
    except Exception:  # not installed: nothing to suggest
        return ''
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob('*.py')
                   if '_base_' not in p.parts)
    folder = rel.rsplit('/', 1)[0] if '/' in rel else ''
    same = [n for n in names if n.startswith(folder + '/')] if folder else []
    near = difflib.get_close_matches(rel, same or names, n=3, cutoff=0.6) or same[:3]
    return f'; did you mean {", ".join(f"{package}::{n}" for n in near)}?' if near else ''
