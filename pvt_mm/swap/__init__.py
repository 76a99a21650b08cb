"""Swap the backbone of any mmdet 3.x / mmseg 1.x config for PVT or PVTv2.

``core`` (the swap itself: :func:`swap_config`, :func:`swap_overrides`,
:func:`write_swapped_config`), ``rules`` (how each neck / head / wrapper that reads backbone
maps is rewired) and ``sweep`` (the coverage run over the installed packages' own configs,
``tools/swap_backbone.py --sweep``; imported on demand: ``from pvt_mm.swap.sweep import
run_sweep``).
"""
from .core import (DEFAULT_DROP_PATH, DEFAULT_LR, DEFAULT_WEIGHT_DECAY, IMAGENET_MEAN,
                   IMAGENET_STD, SwapError, load_stock_config, official_checkpoint, render,
                   resolve_arch, resolve_config_path, swap_config, swap_overrides,
                   write_config, write_swapped_config)

__all__ = ['SwapError', 'swap_overrides', 'swap_config', 'write_swapped_config',
           'load_stock_config', 'resolve_config_path', 'resolve_arch', 'official_checkpoint',
           'render', 'write_config', 'DEFAULT_LR', 'DEFAULT_WEIGHT_DECAY', 'DEFAULT_DROP_PATH',
           'IMAGENET_MEAN', 'IMAGENET_STD']
