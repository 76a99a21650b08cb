"""Convert a PVT checkpoint (official whai362/PVT, mmdet, timm or pvt_mm layout) to pvt_mm's.

    python tools/convert_checkpoint.py pvt_small.pth pvt_small_pvtmm.pth --arch small

With ``--arch`` the result is also loaded into that backbone with ``strict=True``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pvt_mm.checkpoint import check_state_dict, read_checkpoint
from pvt_mm.convert import convert_pvt_checkpoint
from pvt_mm.models.backbones import ARCHS, PVT, PVTv2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('src', type=Path, help='checkpoint to convert')
    p.add_argument('dst', type=Path, help='where to write the pvt_mm state dict')
    p.add_argument('--arch', choices=sorted(ARCHS), help='verify by loading into this variant')
    p.add_argument('--prefix', help="take only keys under this prefix (e.g. 'backbone.')")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    state_dict = convert_pvt_checkpoint(read_checkpoint(args.src), prefix=args.prefix)
    if args.arch:
        cls = PVT if ARCHS[args.arch].version == 1 else PVTv2
        model = cls(arch=args.arch)
        check_state_dict(model, state_dict)
        model.load_state_dict(state_dict, strict=True)
    args.dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, args.dst)
    n = sum(v.numel() for v in state_dict.values())
    print(f'wrote {len(state_dict)} tensors ({n / 1e6:.2f}M values) to {args.dst}')


if __name__ == '__main__':
    main()
