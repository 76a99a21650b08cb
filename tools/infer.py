"""Drawn predictions of a trained detector or segmentor for an image or a folder of images,
through mmdet's DetInferencer / mmseg's MMSegInferencer (the config's default_scope picks).

    python tools/infer.py IMAGE_OR_DIR CONFIG CHECKPOINT --out-dir DIR [--score-thr 0.3]

Writes DIR/vis/<image name> (and, for detection, DIR/preds/<image>.json).
"""
from __future__ import annotations

import pvt_mm._quiet  # noqa: F401  first: drops the pkg_resources deprecation noise

import argparse

from pvt_mm.visualization.inference import infer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('inputs', help='an image file or a folder of images')
    p.add_argument('config', help='mmdet or mmseg config')
    p.add_argument('checkpoint', help='checkpoint (e.g. from tools/train.py)')
    p.add_argument('--out-dir', required=True, help='output folder')
    p.add_argument('--score-thr', type=float, default=0.3, help='detection: boxes drawn')
    p.add_argument('--device', default='cpu')
    p.add_argument('--batch-size', type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        paths = infer(args.inputs, args.config, args.checkpoint, args.out_dir, args.score_thr,
                      args.device, args.batch_size)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    for path in paths:
        print(path)


if __name__ == '__main__':
    main()
