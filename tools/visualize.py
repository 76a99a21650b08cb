"""Pictures of what a PVT backbone computes for an image: per stage, the feature map (first
three principal components as RGB, over the image), the spatial-reduction attention of one
query point (heads averaged, upsampled over the image) and, for v1, the position embedding
at the image's grid.

    python tools/visualize.py IMAGE --arch b2 [--checkpoint pvt_v2_b2.pth] --out-dir DIR
    python tools/visualize.py IMAGE --config CONFIG --checkpoint work_dirs/x/epoch_12.pth \\
        [--point X Y] [--size 512] [--block -1] --out-dir DIR

Writes stage{1..4}_features.png, stage{1..4}_attention.png and (v1) stage{1..4}_pos_embed.png,
each the size of the (resized) image. Without --checkpoint the weights are random (warned).
"""
from __future__ import annotations

import pvt_mm._quiet  # noqa: F401  first: drops the pkg_resources deprecation noise

import argparse

from pvt_mm.visualization import visualize_backbone


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('image', help='image file')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--arch', help='tiny/small/medium/large/huge, b0..b5, b2_li or an '
                     'official name (pvt_v2_b2)')
    src.add_argument('--config', help='mmdet/mmseg config: its model.backbone')
    p.add_argument('--checkpoint', help='official, timm, mmdet or whole-model checkpoint')
    p.add_argument('--point', type=float, nargs=2, metavar=('X', 'Y'),
                   help='query pixel of the attention pictures (default: the centre)')
    p.add_argument('--size', type=int, help='resize the longer image side to this first')
    p.add_argument('--block', type=int, default=-1,
                   help="which block's attention in each stage (default -1: the last)")
    p.add_argument('--out-dir', required=True, help='folder for the PNG files')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        paths = visualize_backbone(args.image, args.out_dir, arch=args.arch, config=args.config,
                                   checkpoint=args.checkpoint, point=args.point,
                                   size=args.size, block=args.block)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    for path in paths:
        print(path)


if __name__ == '__main__':
    main()
