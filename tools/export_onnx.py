"""Export a PVT backbone, or a config's single-stage detector / segmentor, to ONNX.

    python tools/export_onnx.py --arch b2 --out pvt_v2_b2.onnx
    python tools/export_onnx.py --arch small --checkpoint pvt_small.pth --out pvt_small.onnx
    python tools/export_onnx.py --config configs/retinanet_pvt_v2_b2_fpn_1x_coco.py \\
        --checkpoint work_dirs/.../epoch_12.pth --out retinanet_b2.onnx --shape 800 1333

The graph has dynamic batch, height and width (the traced size only seeds the trace). A
backbone maps the (B, 3, H, W) image to ``stage{i}`` maps; a detector / segmentor maps the
preprocessed batch (RGB, normalised, padded as its data preprocessor does) to its raw head
outputs (``output{k}_level{l}``: class scores, box deltas[, centerness] per FPN level, no NMS;
a segmentor: ``output0``, the logits at 1/4 resolution). See pvt_mm/deploy/export.py.

With ``--end2end`` the graph is the whole model for one image (batch 1), image in
(float32 (1, 3, H, W), 0-255, BGR, already resized by the config's test resize), results out:
normalisation and padding, box decoding, score threshold, NMS (ONNX NonMaxSuppression) and
top-k inside; detectors give ``num_dets``, ``boxes``, ``scores``, ``labels``, segmentors
``label_map``. Class names, palette and the test resize travel in the file's metadata, so
``tools/infer.py IMAGES model.onnx`` and ``pvt_mm.deploy.predictor`` need no config. See
pvt_mm/deploy/end2end.py (families that cannot be exported are refused with the reason).

    python tools/export_onnx.py --config configs/demo/atss_pvtv2-b0_fpn_demo.py \\
        --checkpoint CKPT --out atss.onnx --end2end
"""
from __future__ import annotations

import argparse
import sys

import pvt_mm._quiet  # noqa: F401  first: drops the pkg_resources deprecation noise
from mmengine.config import DictAction

from pvt_mm.analysis.models import check_shape
from pvt_mm.arch import check_arch
from pvt_mm.deploy.export import (DEFAULT_EXPORTER, DEFAULT_OPSET, EXPORTERS, export_arch,
                                  export_config)


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
    p.add_argument('--exporter', choices=EXPORTERS, default=DEFAULT_EXPORTER,
                   help="torch's ONNX exporter: 'torchscript' (torch.onnx.export(dynamo=False), "
                        "deprecated by torch) or 'dynamo' (torch.export + onnxscript, "
                        'opset >= 18, slower to export); both write every family, same '
                        f'graphs and metadata (default {DEFAULT_EXPORTER})')
    p.add_argument('--end2end', action='store_true',
                   help='with --config: the whole model, preprocessing and postprocessing '
                        '(NMS / argmax) included, from image to detections / label map')
    args = p.parse_args(argv)
    try:
        args.shape = check_shape(args.shape)
        if args.arch:
            args.arch = check_arch(args.arch)
    except ValueError as e:
        p.error(str(e))
    if args.end2end and not args.config:
        p.error('--end2end needs --config (a detector or segmentor)')
    if args.opset < DEFAULT_OPSET:
        p.error(f'--opset must be at least {DEFAULT_OPSET} (LayerNormalization), got {args.opset}')
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.checkpoint:
        print('export_onnx: no --checkpoint given: exporting RANDOM weights (the graph is '
              'right, its outputs are not meaningful)', file=sys.stderr)
    try:
        if args.arch:
            result = export_arch(args.arch, args.out, args.checkpoint, args.opset, args.shape,
                                 args.exporter)
        elif args.end2end:
            from pvt_mm.deploy.end2end import export_end2end
            result = export_end2end(args.config, args.out, args.checkpoint, args.opset,
                                    args.shape, args.cfg_options, args.exporter)
        else:
            result = export_config(args.config, args.out, args.checkpoint, args.opset,
                                   args.shape, args.cfg_options, args.exporter)
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise SystemExit(f'export failed: {e}') from None
    batch = '1' if args.end2end else 'batch'
    print(f'wrote {result.path}: input {result.input_name} ({batch}, 3, height, width), '
          f'outputs {", ".join(result.output_names)}', file=sys.stderr)


if __name__ == '__main__':
    main()
