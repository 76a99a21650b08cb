"""Write a config that swaps the backbone of an mmdet/mmseg config for PVT or PVTv2.

    python tools/swap_backbone.py mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py \\
        --arch b2 --out configs/faster-rcnn_pvt_v2_b2_fpn_1x_coco.py
    python tools/swap_backbone.py path/to/upernet_r50.py --arch small --out upernet_pvt_s.py

The new config inherits CONFIG (``_base_``) and overrides only what the swap needs:
the backbone (``_delete_=True``, official pretrained weights by release URL), the
``in_channels`` of the neck that reads the backbone (or, without a neck, of the decode /
auxiliary heads, mapped through their ``in_index``), ``custom_imports``, the image
normalisation PVT was pretrained with, ``model.pretrained`` (mmseg) and, unless
``--optimizer keep``, AdamW as in the official PVT recipes (poly/cosine ``eta_min`` scaled with
the learning rate). Everything else (FPN ``start_level``, heads, data, schedule) is kept.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmengine.config import Config

from pvt_mm.models.backbones import ARCHS, OFFICIAL_NAMES

RELEASE_URL = 'https://github.com/whai362/PVT/releases/download/v2/'
# ImageNet statistics (RGB, 0-255) the official PVT checkpoints were trained with
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]
DEFAULT_LR = 1e-4  # official PVT RetinaNet; Mask R-CNN and Semantic FPN use 2e-4
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_DROP_PATH = 0.1
HEAD_KEYS = ('decode_head', 'auxiliary_head')  # mmseg heads that may read the backbone
LINE_WIDTH = 88


class SwapError(ValueError):
    """The config cannot be swapped automatically (the message says what to edit)."""


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


def base_reference(config: str, out: Path) -> str:
    """``_base_`` for ``out``: a ``pkg::`` name as is, a path relative to ``out``'s folder."""
    if '::' in config:
        return config
    path = Path(config)
    if not path.is_file():
        raise SwapError(f'config {config!r} not found; give a path or a name such as '
                        "'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'")
    if path.resolve() == out.resolve():
        raise SwapError(f'--out {out} would overwrite the config it inherits')
    return Path(os.path.relpath(path.resolve(), out.resolve().parent)).as_posix()


def load_config(config: str) -> Config:
    """Load a path or a ``pkg::`` name the way a config inheriting it would."""
    ref = config if '::' in config else str(Path(config).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp, 'stub.py')
        stub.write_text(f'_base_ = {ref!r}\n')
        try:
            return Config.fromfile(str(stub))
        except (FileNotFoundError, ModuleNotFoundError, ValueError) as e:
            raise SwapError(f'cannot load config {config!r}: {e}') from e


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) \
        else [value]


def _channels_for(in_index: Any, channels: list[int], where: str) -> Any:
    """Backbone channels picked by a head's ``in_index`` (int or list, as given)."""
    picked = []
    for i in _as_list(in_index):
        if not -len(channels) <= i < len(channels):
            raise SwapError(f'{where}.in_index {in_index} is outside the backbone\'s '
                            f'{len(channels)} outputs')
        picked.append(channels[i])
    return picked if isinstance(in_index, Sequence) else picked[0]


def _neck_override(neck: Mapping, channels: list[int]) -> dict:
    if 'in_channels' not in neck:
        raise SwapError(f'neck {neck.get("type")} has no in_channels; edit it by hand')
    old = neck['in_channels']
    if isinstance(old, int):
        if len(channels) != 1:
            raise SwapError(f'neck {neck.get("type")} takes one input (in_channels={old}) '
                            f'but the backbone gives {len(channels)}; pass --out-indices')
        return dict(in_channels=channels[0])
    if len(old) != len(channels):
        raise SwapError(f'neck {neck.get("type")} in_channels={list(old)} has {len(old)} '
                        f'inputs but the backbone gives {len(channels)}; pass --out-indices')
    return dict(in_channels=list(channels))


def _head_overrides(model: Mapping, channels: list[int]) -> dict:
    """mmseg heads fed by the backbone directly (no neck): remap in_channels by in_index."""
    out = {}
    for key in HEAD_KEYS:
        heads = model.get(key)
        if not heads:
            continue
        fixed = []
        for head in _as_list(heads):
            if 'in_index' not in head or 'in_channels' not in head:
                raise SwapError(f'{key} {head.get("type")} lacks in_index/in_channels; edit '
                                'it by hand')
            fixed.append(dict(in_channels=_channels_for(head['in_index'], channels, key)))
        if isinstance(heads, Mapping):
            out[key] = fixed[0]
        else:  # a list of heads replaces the base list: write each head in full
            out[key] = [{**dict(h), **f} for h, f in zip(heads, fixed)]
    if not out:
        raise SwapError('the model has no neck and no decode_head reading the backbone; only '
                        'configs whose backbone feeds a neck (FPN-like) or mmseg heads are '
                        'supported')
    return out


def _optimizer_overrides(cfg: Config, lr: float, weight_decay: float) -> dict:
    optimizer = cfg.get('optim_wrapper', {}).get('optimizer', {})
    if optimizer.get('type') == 'AdamW':
        return {}  # already a transformer recipe: keep the author's settings
    out: dict[str, Any] = dict(optim_wrapper=dict(optimizer=dict(
        _delete_=True, type='AdamW', lr=lr, weight_decay=weight_decay)))
    old_lr = optimizer.get('lr')
    schedulers = cfg.get('param_scheduler')
    if old_lr and schedulers:
        changed = False
        new = []
        for s in _as_list(schedulers):
            s = dict(s)
            if s.get('eta_min'):
                s['eta_min'] = s['eta_min'] * lr / old_lr
                changed = True
            new.append(s)
        if changed:  # the floor was meant for the old learning rate
            out['param_scheduler'] = new if not isinstance(schedulers, Mapping) else new[0]
    return out


def swap_overrides(cfg: Config, arch: str, checkpoint: str | None = 'official',
                   drop_path_rate: float = DEFAULT_DROP_PATH,
                   out_indices: Sequence[int] | None = None, optimizer: str = 'adamw',
                   lr: float = DEFAULT_LR, weight_decay: float = DEFAULT_WEIGHT_DECAY) -> dict:
    """The keys a config inheriting ``cfg`` must set to use PVT/PVTv2 ``arch``."""
    arch = resolve_arch(arch)
    spec = ARCHS[arch]
    model = cfg.get('model')
    if not model or 'backbone' not in model:
        raise SwapError('the config has no model.backbone to swap')
    old_backbone = model['backbone']
    indices = tuple(out_indices if out_indices is not None
                    else old_backbone.get('out_indices', (0, 1, 2, 3)))
    if not indices or any(not 0 <= i < len(spec.embed_dims) for i in indices):
        raise SwapError(f'backbone out_indices {indices} are not PVT stages 0-3 (the old '
                        f'backbone {old_backbone.get("type")} counts differently); pass '
                        '--out-indices')
    channels = [spec.embed_dims[i] for i in indices]

    backbone: dict[str, Any] = dict(
        _delete_=True, type='PVT' if spec.version == 1 else 'PVTv2', arch=arch,
        out_indices=indices, drop_path_rate=drop_path_rate)
    if checkpoint is not None:
        url = official_checkpoint(arch) if checkpoint == 'official' else checkpoint
        backbone['init_cfg'] = dict(type='Pretrained', checkpoint=url)
    new_model: dict[str, Any] = dict(backbone=backbone)
    if model.get('pretrained'):  # mmseg EncoderDecoder would hand it to the backbone
        new_model['pretrained'] = None
    if 'mean' in model.get('data_preprocessor', {}):
        new_model['data_preprocessor'] = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                              bgr_to_rgb=True)
    neck = model.get('neck')
    if isinstance(neck, Mapping):
        new_model['neck'] = _neck_override(neck, channels)
    elif neck:  # a list of necks: the first reads the backbone; lists are replaced whole
        new_model['neck'] = [{**dict(neck[0]), **_neck_override(neck[0], channels)},
                             *map(dict, neck[1:])]
    else:
        new_model.update(_head_overrides(model, channels))

    imports = _as_list(cfg.get('custom_imports', {}).get('imports', []))
    out: dict[str, Any] = dict(custom_imports=dict(
        imports=[*imports, *(['pvt_mm'] if 'pvt_mm' not in imports else [])],
        allow_failed_imports=False), model=new_model)
    if optimizer == 'adamw':
        out.update(_optimizer_overrides(cfg, lr, weight_decay))
    elif optimizer != 'keep':
        raise SwapError(f"optimizer must be 'adamw' or 'keep', got {optimizer!r}")
    return out


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


def write_config(base_ref: str, overrides: Mapping[str, Any], out: Path, arch: str) -> str:
    lines = ['# Generated by tools/swap_backbone.py: the config below with a PVT backbone '
             f'(arch {arch!r}).', f'_base_ = {base_ref!r}']
    lines += [f'{key} = {render(value, used=len(key) + 3)}' for key, value in overrides.items()]
    text = '\n'.join(lines) + '\n'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def swap_backbone(config: str, arch: str, out: str | os.PathLike, **kwargs: Any) -> Path:
    """Write ``out``: ``config`` (a path or ``pkg::name``) with a PVT ``arch`` backbone."""
    out = Path(out)
    base_ref = base_reference(config, out)
    overrides = swap_overrides(load_config(config), arch, **kwargs)
    write_config(base_ref, overrides, out, resolve_arch(arch))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help="config path or name, e.g. 'mmseg::upernet/upernet_r50_"
                                  "4xb4-80k_ade20k-512x512.py'")
    p.add_argument('--arch', required=True,
                   help=f'PVT variant: {", ".join(ARCHS)} (or an official class name)')
    p.add_argument('--out', required=True, type=Path, help='the config to write')
    p.add_argument('--checkpoint', default='official',
                   help="pretrained weights: 'official' (release URL, resolved offline from "
                        "the torch hub cache), a path/URL, or 'none'")
    p.add_argument('--drop-path-rate', type=float, default=DEFAULT_DROP_PATH)
    p.add_argument('--out-indices', type=int, nargs='+',
                   help="PVT stages to return (default: the old backbone's out_indices)")
    p.add_argument('--optimizer', choices=('adamw', 'keep'), default='adamw',
                   help='adamw: AdamW(lr, weight decay) unless the config already uses AdamW')
    p.add_argument('--lr', type=float, default=DEFAULT_LR)
    p.add_argument('--weight-decay', type=float, default=DEFAULT_WEIGHT_DECAY)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = swap_backbone(
            args.config, args.arch, args.out,
            checkpoint=None if args.checkpoint == 'none' else args.checkpoint,
            drop_path_rate=args.drop_path_rate, out_indices=args.out_indices,
            optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay)
    except SwapError as e:
        print(f'swap_backbone: error: {e}', file=sys.stderr)
        return 2
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
