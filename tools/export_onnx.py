"""Export a PVT backbone, or a config's single-stage detector / segmentor, to ONNX.

    python tools/export_onnx.py --arch b2 --out pvt_v2_b2.onnx
    python tools/export_onnx.py --arch small --checkpoint pvt_small.pth --out pvt_small.onnx
    python tools/export_onnx.py --config configs/retinanet_pvt_v2_b2_fpn_1x_coco.py \
        --checkpoint work_dirs/.../epoch_12.pth --out retinanet_b2.onnx --shape 800 1333

The graph has dynamic batch, height and width (the traced size only seeds the trace). A
backbone maps the (B, 3, H, W) image to ``stage{i}`` maps; a detector / segmentor maps the
preprocessed batch (RGB, normalised, padded as its data preprocessor does) to its raw head
outputs (``output{k}_level{l}``: class scores, box deltas[, centerness] per FPN level, no NMS;
a segmentor: ``output0``, the logits at 1/4 resolution). See pvt_mm/deploy/export.py.
"""
from __future__ import annotations

import argparse
import sys

import pvt_mm._quiet  # noqa: F401  first: drops the pkg_resources deprecation noise
from mmengine.config import DictAction

from pvt_mm.analysis.models import check_arch, check_shape
from pvt_mm.deploy.export import DEFAULT_OPSET, export_arch, export_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--arch', help='backbone variant: tiny/small/medium/large, b0..b5, b2_li '
                                    '(or an official name such as pvt_v2_b2)')
    src.add_argument('--config', help='mmdet / mmseg config of a single-stage detector or a '
                                      'segmentor')
    p.add_argument('--checkpoint', help='weights: a backbone checkpoint in any supported '
                                        'layout (--arch) or a whole-model checkpoint (--config)')
    p.add_argument('--out', required=True, help='the .onnx file to write')
    p.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                   help=f'ONNX opset (default {DEFAULT_OPSET}, the first with LayerNormalization)')
    p.add_argument('--shape', type=int, nargs='+', default=[224],
                   help='input size H [W] to trace with (default 224); the graph takes any size')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys')
    args = p.parse_args(argv)
    try:
        args.shape = check_shape(args.shape)
        if args.arch:
            args.arch = check_arch(args.arch)
    except ValueError as e:
        p.error(str(e))
    if args.opset < DEFAULT_OPSET:
        p.error(f'--opset must be at least {DEFAULT_OPSET} (LayerNormalization), got {args.opset}')
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.arch:
            result = export_arch(args.arch, args.out, args.checkpoint, args.opset, args.shape)
        else:
            result = export_config(args.config, args.out, args.checkpoint, args.opset,
                                   args.shape, args.cfg_options)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f'export failed: {e}') from None
    print(f'wrote {result.path}: input {result.input_name} (batch, 3, height, width), '
          f'outputs {", ".join(result.output_names)}', file=sys.stderr)


if __name__ == '__main__':
    main()
