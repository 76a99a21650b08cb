"""Write a config that swaps the backbone of an mmdet/mmseg config for PVT or PVTv2, or
measure how many stock configs swap (``--sweep``).

    python tools/swap_backbone.py mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py \\
        --arch b2 --out configs/faster-rcnn_pvt_v2_b2_fpn_1x_coco.py
    python tools/swap_backbone.py path/to/upernet_r50.py --arch small --out upernet_pvt_s.py
    python tools/swap_backbone.py mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py --arch b0 \\
        --data data/mine --out work_dirs/fcos_b0_mine.py [--classes a b c] [--scale 256]
    python tools/swap_backbone.py --sweep all --arch b0 [--all-configs] [--only FOLDER ...] \\
        [--markdown FILE]

The new config inherits CONFIG (``_base_``) and overrides only what the swap needs (the logic
is :mod:`pvt_mm.swap`): the backbone (``_delete_=True``, official pretrained weights by release
URL), whatever reads the backbone maps (necks, heads by ``in_index``, pixel decoders, C4
adapters, nested detectors), ``custom_imports``, the image normalisation PVT was pretrained
with, ``model.pretrained`` (mmseg) and, unless ``--optimizer keep``, AdamW as in the official
PVT recipes. Configs that cannot be swapped correctly are refused with the reason (exit 2).
With --data DIR (a COCO folder: annotations/instances_{train,val}*.json and the image folders;
or an mmseg folder: images/ and annotations/{training,validation}, classes.txt), the config
also trains and tests on DIR (:mod:`pvt_mm.swap.adapt`): datasets, classes and palette,
num_classes in every head, the evaluators' annotation file and, for images much smaller than
the stock resize (or with --scale), every pipeline size; see docs/own_data.md.
The sweep (:mod:`pvt_mm.swap.sweep`) builds and runs every stock config and its swap on one
small image with random weights, offline, one line per config (model-build logs are
silenced), and writes the coverage table: the full sweep to docs/swap_coverage.md, a partial
one (--only, --all-configs, another arch or size) under work_dirs/swap_sweep/ unless
--markdown names a file.
"""
from __future__ import annotations

import pvt_mm._quiet  # noqa: F401  first: drops the pkg_resources deprecation noise

import argparse
import sys
from pathlib import Path

from pvt_mm.arch import ARCHS
from pvt_mm.swap import (DEFAULT_DROP_PATH, DEFAULT_LR, DEFAULT_WEIGHT_DECAY, SwapError,
                         write_swapped_config)

SHIPPED_TABLE = Path('docs/swap_coverage.md')  # what the full sweep writes (in the repo)
PARTIAL_TABLE_DIR = Path('work_dirs/swap_sweep')  # partial sweeps' tables (ignored by git)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', nargs='?', help="config path or name, e.g. 'mmseg::upernet/"
                                             "upernet_r50_4xb4-80k_ade20k-512x512.py'")
    p.add_argument('--arch', help=f'PVT variant: {", ".join(ARCHS)} (or an official class '
                                  'name); --sweep: default b0')
    p.add_argument('--out', type=Path, help='the config to write')
    p.add_argument('--checkpoint', default='official',
                   help="pretrained weights: 'official' (release URL, resolved offline from "
                        "the torch hub cache), a path/URL, or 'none'")
    p.add_argument('--drop-path-rate', type=float, default=DEFAULT_DROP_PATH)
    p.add_argument('--out-indices', type=int, nargs='+',
                   help="PVT stages to return (default: the old backbone's out_indices)")
    p.add_argument('--optimizer', choices=('adamw', 'keep'), default='adamw',
                   help='adamw: AdamW(lr, weight decay) unless the config already uses AdamW')
    p.add_argument('--lr', type=float, default=DEFAULT_LR)
    data = p.add_argument_group('your own dataset')
    data.add_argument('--data', type=Path, metavar='DIR',
                      help='a COCO instances folder or an mmseg folder (see docs/own_data.md)')
    data.add_argument('--classes', nargs='+', metavar='NAME',
                      help='COCO: train on these categories only; mmseg: the names of label '
                           'values 0..N-1 (instead of classes.txt)')
    data.add_argument('--scale', type=int, nargs='+', metavar='SIZE',
                      help='the test resize: its shorter side (one number) or W H; every other '
                           'pipeline size follows. Default: the stock sizes, or sizes that fit '
                           'images much smaller than them; 0: the stock sizes')
    p.add_argument('--weight-decay', type=float, default=DEFAULT_WEIGHT_DECAY)
    sweep = p.add_argument_group('sweep over the installed packages\' own configs')
    sweep.add_argument('--sweep', choices=('mmdet', 'mmseg', 'all'),
                       help='swap, build and run the first ResNet-50 config of every method '
                            'folder (stock first), and write the coverage table')
    sweep.add_argument('--all-configs', action='store_true',
                       help='every ResNet-50 config of each folder, not only the first')
    sweep.add_argument('--only', nargs='+', metavar='FOLDER',
                       help='only these method folders (e.g. mask2former knet)')
    sweep.add_argument('--image-size', type=int, default=128)
    sweep.add_argument('--threads', type=int, default=1, help='torch threads (default 1)')
    sweep.add_argument('--markdown', type=Path,
                       help=f'where the sweep writes its table (default: {SHIPPED_TABLE} '
                       f'for the full sweep, --sweep all --arch b0 as shipped; any other '
                       f'sweep: {PARTIAL_TABLE_DIR}/<sweep>.md, so the shipped table is only '
                       'replaced when asked)')
    args = p.parse_args(argv)
    if args.sweep is None and (args.config is None or args.arch is None or args.out is None):
        p.error('give CONFIG --arch ARCH --out FILE, or --sweep')
    if (args.classes or args.scale) and args.data is None:
        p.error('--classes and --scale go with --data DIR')
    if args.sweep and args.markdown is None:
        args.markdown = default_table(args)
    return args


def default_table(args: argparse.Namespace) -> Path:
    """The shipped table for the sweep it records (``--sweep all``, b0, 128 px, first config
    of each folder, no ``--only``); a partial sweep's table goes under the work dir."""
    full = (args.sweep == 'all' and not args.only and not args.all_configs
            and args.image_size == 128 and (args.arch or 'b0') == 'b0')
    if full:
        return SHIPPED_TABLE
    parts = [args.sweep, args.arch or 'b0', *(args.only or []),
             *(['all-configs'] if args.all_configs else []), f'{args.image_size}px']
    return PARTIAL_TABLE_DIR / ('_'.join(parts) + '.md')


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sweep:
        from pvt_mm.swap.sweep import run_sweep
        return run_sweep(args.sweep, arch=args.arch or 'b0', all_configs=args.all_configs,
                         only=args.only, image_size=args.image_size, markdown=args.markdown,
                         threads=args.threads)
    notes: list[str] = []
    scale = None if args.scale is None else (args.scale[0] if len(args.scale) == 1
                                             else args.scale)
    try:
        out = write_swapped_config(
            args.config, args.arch, args.out, data=args.data, classes=args.classes,
            scale=scale, notes=notes,
            checkpoint=None if args.checkpoint == 'none' else args.checkpoint,
            drop_path_rate=args.drop_path_rate, out_indices=args.out_indices,
            optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay)
    except SwapError as e:
        print(f'swap_backbone: error: {e}', file=sys.stderr)
        return 2
    for note in notes:
        print(f'note: {note}')
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
