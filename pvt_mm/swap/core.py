"""Swap the backbone of an mmdet 3.x / mmseg 1.x config for PVT or PVTv2.

:func:`swap_overrides` is a pure function from a config to the keys a config inheriting it
must set; :func:`swap_config` applies them (the whole swapped config, in memory);
:func:`write_swapped_config` writes a config file that inherits the original
(``tools/swap_backbone.py``).

Every place a stock config feeds backbone maps into the model is rewired (the rules live in
:mod:`pvt_mm.swap.rules`): necks (``in_channels`` lists or ints, ``ChannelMapper`` of the
DETR family, JPU's pass-through maps, ``GlobalAveragePooling`` before a ReID head), heads that
read the backbone (mmseg heads by ``in_index``, DeepLabV3+'s ``c1_in_channels``, K-Net's
``kernel_generate_head``, MaskFormer / Mask2Former pixel decoders), C4 detectors (a 1x1
``ChannelMapper`` gives their ResNet ``res5`` RoI head the channels it was built for), nested
models (``model.detector``, ``model.reid``). What cannot be
correct is refused with :class:`SwapError` at swap time. Besides the backbone, the swap sets
``custom_imports``, ImageNet RGB normalisation, ``pretrained``/whole-model ``init_cfg`` to None
(they hold ResNet weights) and, unless ``optimizer='keep'``, AdamW as the official PVT recipes.
"""
from __future__ import annotations

import copy
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmengine.config import Config

from ..engine.config_check import stock_config_hint
from ..arch import ARCHS, OFFICIAL_NAMES
from .adapt import auto_scale, data_overrides, stock_test_scale
from .data import inspect_dataset
from .rules import (IMAGENET_MEAN, IMAGENET_STD, SUBMODEL_KEYS, SwapError, as_list,
                    fix_model, stride_notes, submodel_paths)

__all__ = ['SwapError', 'swap_overrides', 'swap_config', 'write_swapped_config',
           'load_stock_config', 'resolve_config_path', 'resolve_arch', 'official_checkpoint',
           'render', 'write_config', 'own_data_overrides', 'DEFAULT_LR', 'DEFAULT_WEIGHT_DECAY',
           'DEFAULT_DROP_PATH', 'IMAGENET_MEAN', 'IMAGENET_STD']

RELEASE_URL = 'https://github.com/whai362/PVT/releases/download/v2/'
DEFAULT_LR = 1e-4  # official PVT RetinaNet; Mask R-CNN and Semantic FPN use 2e-4
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_DROP_PATH = 0.1
LINE_WIDTH = 88
# what mmengine's ``pkg::`` loader accepts (``_get_package_and_cfg_path``)
_MMENGINE_PKG_NAME = re.compile(r'\w*::\w*/\w*')


def resolve_arch(arch: str) -> str:
    """An ARCHS key or an official class name (``pvt_v2_b2``) -> the ARCHS key."""
    name = OFFICIAL_NAMES.get(arch, arch)
    if name not in ARCHS:
        raise SwapError(f'unknown PVT arch {arch!r}; choose one of {sorted(ARCHS)} (or an '
                        f'official name: {sorted(OFFICIAL_NAMES)})')
    return name


def official_checkpoint(arch: str) -> str:
    """The whai362/PVT release URL of ``arch``'s ImageNet weights."""
    official = {v: k for k, v in OFFICIAL_NAMES.items()}[arch]
    return f'{RELEASE_URL}{official}.pth'


def resolve_config_path(config: str) -> Path:
    """The file behind ``'pkg::folder/name.py'`` (the package's ``.mim/configs``) or a path.

    Used where mmengine's ``pkg::`` loader refuses a name (e.g. mmdet's ``gn+ws`` folder)."""
    if '::' not in config:
        return Path(config)
    from mmengine.config.utils import MODULE2PACKAGE
    from mmengine.utils import get_installed_path
    package, rel = config.split('::', 1)
    if package not in MODULE2PACKAGE:
        raise SwapError(f'config {config!r}: unknown package {package!r}; mmengine knows '
                        f'{sorted(MODULE2PACKAGE)}')
    try:
        root = Path(get_installed_path(MODULE2PACKAGE[package]))
    except Exception as e:  # not installed
        raise SwapError(f'config {config!r}: package {package!r} is not installed') from e
    bases = [b for b in (root / '.mim' / 'configs', root / 'configs', root.parent / 'configs')
             if b.is_dir()]
    for base in bases:
        if (base / rel).is_file():
            return base / rel
    raise SwapError(f'cannot load config {config!r}: no {rel} under {root}/.mim/configs'
                    + stock_config_hint(config))


def _base_ref(config: str) -> str:
    """How a config inheriting ``config`` names it: ``pkg::name`` where mmengine's loader
    accepts it, else the absolute path (a name such as ``mmdet::gn+ws/...``, a local file)."""
    if '::' not in config:
        return str(Path(config).resolve())
    if _MMENGINE_PKG_NAME.match(config):
        return config
    return str(resolve_config_path(config).resolve())


def load_stock_config(config: str | os.PathLike) -> Config:
    """Load a path or a ``pkg::`` name the way a config inheriting it would."""
    config = str(config)
    if '::' not in config and not Path(config).is_file():
        raise SwapError(f'config {config!r} not found; give a path or a name such as '
                        "'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'")
    if '::' in config:
        resolve_config_path(config)  # a missing name: the nearest stock names
    ref = _base_ref(config)
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp, 'stub.py')
        stub.write_text(f'_base_ = {ref!r}\n')
        try:
            return Config.fromfile(str(stub))
        except (FileNotFoundError, ModuleNotFoundError, ValueError) as e:
            raise SwapError(f'cannot load config {config!r}: {e}') from e


def base_reference(config: str, out: Path) -> str:
    """``_base_`` for ``out``: a ``pkg::`` name as is (a package path where mmengine refuses
    the name: :func:`write_swapped_config` writes those flat instead), a path relative to
    ``out``'s folder."""
    if '::' in config:
        return _base_ref(config)
    path = Path(config)
    if not path.is_file():
        raise SwapError(f'config {config!r} not found; give a path or a name such as '
                        "'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'")
    if path.resolve() == out.resolve():
        raise SwapError(f'--out {out} would overwrite the config it inherits')
    return Path(os.path.relpath(path.resolve(), out.resolve().parent)).as_posix()


def _optimizer_overrides(cfg: Mapping, lr: float, weight_decay: float) -> dict:
    optimizer = cfg.get('optim_wrapper', {}).get('optimizer', {})
    if not optimizer or optimizer.get('type') == 'AdamW':
        return {}  # no optimizer, or already a transformer recipe: keep the author's settings
    out: dict[str, Any] = dict(optim_wrapper=dict(optimizer=dict(
        _delete_=True, type='AdamW', lr=lr, weight_decay=weight_decay)))
    old_lr = optimizer.get('lr')
    schedulers = cfg.get('param_scheduler')
    if old_lr and schedulers:
        changed = False
        new = []
        for s in as_list(schedulers):
            s = dict(s)
            if s.get('eta_min'):
                s['eta_min'] = s['eta_min'] * lr / old_lr
                changed = True
            new.append(s)
        if changed:  # the floor was meant for the old learning rate
            out['param_scheduler'] = new if not isinstance(schedulers, Mapping) else new[0]
    return out


def _to_dict(cfg: Config | Mapping) -> dict:
    if isinstance(cfg, Config):
        return cfg.to_dict()
    return copy.deepcopy(dict(cfg))


def swap_overrides(cfg: Config | Mapping, arch: str, checkpoint: str | None = 'official',
                   drop_path_rate: float = DEFAULT_DROP_PATH,
                   out_indices: Sequence[int] | None = None, optimizer: str = 'adamw',
                   lr: float = DEFAULT_LR, weight_decay: float = DEFAULT_WEIGHT_DECAY) -> dict:
    """The keys a config inheriting ``cfg`` must set to use PVT/PVTv2 ``arch`` (pure).

    ``out_indices`` (PVT stages) defaults to the old backbone's, which count the same stages
    (strides 4/8/16/32) for the ResNet family. Raises :class:`SwapError` with the reason
    where the swap cannot be correct."""
    arch = resolve_arch(arch)
    if optimizer not in ('adamw', 'keep'):
        raise SwapError(f"optimizer must be 'adamw' or 'keep', got {optimizer!r}")
    cfg = _to_dict(cfg)
    model = cfg.get('model')
    if not model:
        raise SwapError('the config has no model')
    backbone_args: dict[str, Any] = dict(arch=arch, drop_path_rate=drop_path_rate)
    if checkpoint is not None:
        url = official_checkpoint(arch) if checkpoint == 'official' else checkpoint
        backbone_args['init_cfg'] = dict(type='Pretrained', checkpoint=url)
    paths = submodel_paths(model)
    if not paths:
        raise SwapError('the config has no model.backbone to swap (nor model.detector.'
                        'backbone / model.reid.backbone)')
    new_model: dict[str, Any] = {}
    for path in paths:
        sub = model
        for key in path:
            sub = sub[key]
        fixed = fix_model(sub, ARCHS[arch], backbone_args, out_indices,
                          where='.'.join(('model', *path)))
        target = new_model
        for key in path:
            target = target.setdefault(key, {})
        target.update(fixed)
    _normalisation(model, new_model)

    imports = as_list(cfg.get('custom_imports', {}).get('imports', []))
    out: dict[str, Any] = dict(custom_imports=dict(
        imports=[*imports, *(['pvt_mm'] if 'pvt_mm' not in imports else [])],
        allow_failed_imports=False), model=new_model)
    if optimizer == 'adamw':
        out.update(_optimizer_overrides(cfg, lr, weight_decay))
    return out


def _normalisation(model: Mapping, new_model: dict) -> None:
    """ImageNet RGB statistics in every data preprocessor that normalises (also one nested
    in a MultiBranchDataPreprocessor, and those of nested detectors)."""
    def norm(pre: Mapping) -> dict:  # ReID/classification preprocessors say ``to_rgb``
        rgb = 'to_rgb' if 'ReID' in str(pre.get('type')) or 'Cls' in str(pre.get('type')) \
            else 'bgr_to_rgb'
        return {'mean': IMAGENET_MEAN, 'std': IMAGENET_STD, rgb: True}

    for key in (None, *SUBMODEL_KEYS):
        src = model.get(key, {}) if key else model
        dst = new_model.setdefault(key, {}) if key else new_model
        pre = src.get('data_preprocessor') or {}
        if 'mean' in pre:
            dst.setdefault('data_preprocessor', {}).update(norm(pre))
        elif 'mean' in (pre.get('data_preprocessor') or {}):
            dst.setdefault('data_preprocessor', {})['data_preprocessor'] = norm(
                pre['data_preprocessor'])
        if key and not dst:
            new_model.pop(key)


def swap_config(cfg: Config | Mapping, arch: str, **kwargs: Any) -> Config:
    """``cfg`` (a Config or a dict) with a PVT ``arch`` backbone: a new Config, ``cfg`` is
    left untouched. Keyword arguments as :func:`swap_overrides`."""
    overrides = swap_overrides(cfg, arch, **kwargs)
    merged = Config._merge_a_into_b(copy.deepcopy(overrides), _to_dict(cfg),
                                    allow_list_keys=True)
    return Config(merged)


def render(value: Any, indent: int = 0, used: int = 0) -> str:
    """Python source for a config value: ``dict(key=...)`` in insertion order; ``indent`` is
    the nesting depth in spaces, ``used`` the columns already taken on the first line."""
    pad = ' ' * (indent + 4)
    if isinstance(value, Mapping):
        items = [f'{k}={render(v, indent + 4, indent + 5 + len(k))}' for k, v in value.items()]
        open_, close, trailing = 'dict(', ')', ''
    elif isinstance(value, (list, tuple)):
        items = [render(v, indent + 4, indent + 4) for v in value]
        open_, close = ('[', ']') if isinstance(value, list) else ('(', ')')
        trailing = ',' if isinstance(value, tuple) and len(value) == 1 else ''
    else:
        return repr(value)
    one_line = f'{open_}{", ".join(items)}{trailing}{close}'
    if '\n' not in one_line and used + len(one_line) < LINE_WIDTH:
        return one_line
    return open_ + '\n' + ',\n'.join(pad + item for item in items) + close


def write_config(base_ref: str, overrides: Mapping[str, Any], out: Path, arch: str,
                 notes: Sequence[str] = ()) -> str:
    """Write ``out``: ``_base_ = base_ref`` and ``overrides`` (``notes`` as comments first);
    returns the text."""
    lines = ['# Generated by tools/swap_backbone.py: the config below with a PVT backbone '
             f'(arch {arch!r}).', *(f'# NOTE: {n}' for n in notes), f'_base_ = {base_ref!r}']
    lines += [f'{key} = {render(value, used=len(key) + 3)}' for key, value in overrides.items()]
    text = '\n'.join(lines) + '\n'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def _deep_update(base: dict, new: Mapping) -> dict:
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), Mapping) and '_delete_' not in v:
            base[k] = _deep_update(dict(base[k]), v)
        else:
            base[k] = v
    return base


def own_data_overrides(stock: Config, arch: str, data: str | os.PathLike,
                       classes: Sequence[str] | None = None,
                       scale: int | Sequence[int] | None = None, **kwargs: Any
                       ) -> tuple[dict, list[str]]:
    """The swap's overrides plus those pointing ``stock`` at the dataset folder ``data``
    (:mod:`pvt_mm.swap.adapt`), and the notes to print. ``scale``: None (the stock sizes, or,
    for images much smaller than the stock test resize, sizes that fit them), 0 (the stock
    sizes), N (the test resize's shorter side) or (W, H) (the test resize)."""
    overrides = swap_overrides(stock, arch, **kwargs)
    swapped = Config._merge_a_into_b(copy.deepcopy(overrides), _to_dict(stock),
                                     allow_list_keys=True)
    info = inspect_dataset(data, classes)
    notes = list(info.notes)
    factor = 1.0
    target = None
    if scale is None:
        found = auto_scale(swapped, info)
        if found:
            factor, note = found
            notes.append(note)
    elif scale != 0 and scale != [0]:
        stock_scale = stock_test_scale(swapped)
        if stock_scale is None:
            raise SwapError('--scale: the test pipeline has no Resize with a (W, H) scale to '
                            'scale from; edit the pipelines by hand')
        sizes = [int(v) for v in as_list(scale)]
        if len(sizes) not in (1, 2) or min(sizes) < 32:
            raise SwapError(f'--scale takes one size (the shorter side) or W H, each >= 32; '
                            f'got {sizes}')
        factor = min(sizes) / min(stock_scale)
        target = tuple(sizes) if len(sizes) == 2 else None
    scope = str(stock.get('default_scope', 'mmdet'))
    extra = data_overrides(swapped, info, scope, factor, test_scale=target)
    notes.append(f'{len(info.classes)} classes from {info.root}: {", ".join(info.classes)}')
    return _deep_update(overrides, extra), notes


def write_swapped_config(config: str, arch: str, out: str | os.PathLike,
                  data: str | os.PathLike | None = None, classes: Sequence[str] | None = None,
                  scale: int | Sequence[int] | None = None, notes: list | None = None,
                  **kwargs: Any) -> Path:
    """Write ``out``: ``config`` (a path or ``pkg::name``) with a PVT ``arch`` backbone and,
    with ``data`` (a COCO or mmseg dataset folder), trained and tested on it (see
    :func:`own_data_overrides`). ``notes`` (a list) receives what the user should know (a
    changed output stride, the scale chosen); they are also written as comments.

    A ``pkg::`` name mmengine's loader refuses (mmdet's ``gn+ws`` folder) cannot be inherited
    by name, and its installed path does not move to another machine: the stock config is
    written flat beside ``out`` (``<out>_stock.py``) and ``out`` inherits that."""
    out = Path(out)
    stock = load_stock_config(config)
    said = stride_notes(stock.model.to_dict() if stock.get('model') else {},
                        ARCHS[resolve_arch(arch)], kwargs.get('out_indices'))
    if data is None:
        overrides = swap_overrides(stock, arch, **kwargs)
    else:
        overrides, data_notes = own_data_overrides(stock, arch, data, classes, scale,
                                                   **kwargs)
        said += data_notes
        overrides = _ordered(overrides)
    if notes is not None:
        notes.extend(said)
    if '::' in config and not _MMENGINE_PKG_NAME.match(config):
        flat = out.with_name(f'{out.stem}_stock.py')
        out.parent.mkdir(parents=True, exist_ok=True)
        flat.write_text(f'# {config}, as loaded by mmengine (its name cannot be inherited)\n'
                        + stock.pretty_text + '\n')
        base_ref = f'./{flat.name}'
    else:
        base_ref = base_reference(config, out)
    write_config(base_ref, overrides, out, resolve_arch(arch), said)
    return out


ORDER = ('custom_imports', 'data_root', 'metainfo', 'train_pipeline', 'test_pipeline', 'model',
         'train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator',
         'test_evaluator')


def _ordered(overrides: Mapping[str, Any]) -> dict:
    """Variables before their users (``data_root`` ... pipelines first)."""
    keys = [k for k in ORDER if k in overrides] + [k for k in overrides if k not in ORDER]
    return {k: overrides[k] for k in keys}
