"""Convert a PVT checkpoint (official whai362/PVT, mmdet, timm or pvt_mm layout; a ``.pth``
or ``.safetensors`` file, or a whole mmengine detector/segmentor checkpoint) to pvt_mm's.

    python tools/convert_checkpoint.py pvt_small.pth pvt_small_pvtmm.pth --arch small
    python tools/convert_checkpoint.py pvt_v2_b2.pth pvt_v2_b2.safetensors

With ``--arch`` the result is also loaded into that backbone with ``strict=True``. The output
is written to a temporary file beside DST and renamed into place when complete; DST may not
be SRC (nor a link to it).
"""
from __future__ import annotations

import pvt_mm._quiet  # noqa: F401  first: drops the pkg_resources deprecation noise

import argparse
import os
from pathlib import Path

from pvt_mm.checkpoint import (FORMATS, check_state_dict, checkpoint_format, read_checkpoint,
                               write_checkpoint)
from pvt_mm.convert import convert_pvt_checkpoint
from pvt_mm.models.backbones import ARCHS, PVT, PVTv2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('src', type=Path, help='checkpoint to convert')
    p.add_argument('dst', type=Path, help='where to write the pvt_mm state dict')
    p.add_argument('--arch', choices=sorted(ARCHS), help='verify by loading into this variant')
    p.add_argument('--prefix', help="take only keys under this prefix (e.g. 'backbone.')")
    p.add_argument('--format', choices=FORMATS,
                   help='output format (default: safetensors for a .safetensors DST, else torch)')
    return p.parse_args(argv)


def check_paths(src: Path, dst: Path) -> None:
    """Refuse a DST that is SRC, a link to it or the same file (inode) under another name:
    writing it would destroy the input."""
    if src.resolve() == dst.resolve() or (dst.exists() and src.exists()
                                          and os.path.samefile(src, dst)):
        raise SystemExit(f'error: DST {dst} is the input file {src} (or a link to it); '
                         'write the converted checkpoint to another path')


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_paths(args.src, args.dst)
    fmt = checkpoint_format(args.dst, args.format)
    state_dict = convert_pvt_checkpoint(read_checkpoint(args.src), prefix=args.prefix)
    if args.arch:
        cls = PVT if ARCHS[args.arch].version == 1 else PVTv2
        model = cls(arch=args.arch)
        check_state_dict(model, state_dict, source=args.src)
        model.load_state_dict(state_dict, strict=True)
    write_checkpoint(state_dict, args.dst, fmt)
    n = sum(v.numel() for v in state_dict.values())
    print(f'wrote {len(state_dict)} tensors ({n / 1e6:.2f}M values, {fmt}) to {args.dst}')


if __name__ == '__main__':
    main()
