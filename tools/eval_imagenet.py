"""Evaluate a timm classifier (e.g. ``pvt_v1_small``) on an ImageNet-style folder.

    python tools/eval_imagenet.py /path/to/imagenet/val --model pvt_v1_small \\
        --checkpoint pvt_small.pth [--batch-size 64] [--workers 2] [--num-classes N]

The folder holds one subfolder per class (sorted names = class indices, as ILSVRC2012 val
arranged by synset); preprocessing is the model's pretrained config (PVT v1: resize 256
bicubic, centre crop 224, ImageNet mean/std) through timm's data pipeline.
"""
from __future__ import annotations

import pvt_mm._quiet  # noqa: F401  first: drops the pkg_resources deprecation noise

import argparse

import pvt_mm  # noqa: F401  registers pvt_v1_* in timm
from pvt_mm.analysis.imagenet import build_classifier, evaluate_folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('root', help='folder of class subfolders')
    p.add_argument('--model', default='pvt_v1_small', help='timm model name')
    p.add_argument('--checkpoint', help='official or timm checkpoint (default: random weights)')
    p.add_argument('--num-classes', type=int, help="the checkpoint head's classes "
                   '(default: the pretrained config, 1000)')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--workers', type=int, default=2, help='data loading processes')
    p.add_argument('--log-every', type=int, default=50, help='batches between progress lines')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        model = build_classifier(args.model, args.checkpoint, args.num_classes)
        if args.checkpoint is None:
            print('warning: no --checkpoint: random weights')
        result = evaluate_folder(model, args.root, args.batch_size, args.workers,
                                 args.log_every)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    print(f'{args.model}: images {result.images}  top1 {result.top1:.2f}  '
          f'top5 {result.top5:.2f}  ({result.seconds:.1f} s)')


if __name__ == '__main__':
    main()
