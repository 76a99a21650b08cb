"""Drawn predictions of a trained detector or segmentor for an image or a folder of images,
through mmdet's DetInferencer / mmseg's MMSegInferencer (the config's default_scope picks).

    python tools/infer.py IMAGE_OR_DIR CONFIG CHECKPOINT --out-dir DIR [--score-thr 0.3]
    python tools/infer.py IMAGE_OR_DIR MODEL.onnx --runtime onnxruntime|openvino --out-dir DIR

An end-to-end .onnx (tools/export_onnx.py --end2end) needs no config nor PyTorch model: it
writes the same files through pvt_mm.deploy.infer.infer_onnx.

Writes DIR/vis/<image name> (and, for detection, DIR/preds/<image>.json). Before any model is
loaded, DIR must be (or become) a writable folder and every image must have a readable header
of at most 8192 x 8192 pixels; in a folder with unreadable images, all of them are named and
nothing is run.
"""
from __future__ import annotations

import pvt_mm._quiet  # noqa: F401  first: drops the pkg_resources deprecation noise

import argparse

from pvt_mm.loading.convert import CheckpointError
from pvt_mm.visualization.inference import infer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('inputs', help='an image file or a folder of images')
    p.add_argument('config', help='mmdet or mmseg config, or an end-to-end MODEL.onnx')
    p.add_argument('checkpoint', nargs='?', help='checkpoint (e.g. from tools/train.py); '
                                                 'not with a .onnx')
    p.add_argument('--runtime', choices=('onnxruntime', 'openvino'), default='onnxruntime',
                   help='runtime for a .onnx model')
    p.add_argument('--out-dir', required=True, help='output folder')
    p.add_argument('--score-thr', type=float, default=0.3, help='detection: boxes drawn')
    p.add_argument('--device', default='cpu')
    p.add_argument('--batch-size', type=int, default=1)
    args = p.parse_args(argv)
    if (args.checkpoint is None) != args.config.endswith('.onnx'):
        p.error('give CONFIG CHECKPOINT, or one end-to-end MODEL.onnx')
    return args


def check_inputs(inputs: str, out_dir: str) -> None:
    """Before any model is loaded: the output folder is a writable directory, and every image
    (one file, or each image of a folder) has a readable header of a bounded size. A folder
    with unreadable files stops here, naming all of them, before any work is done."""
    from pathlib import Path

    from pvt_mm.visualization.inference import IMAGE_SUFFIXES
    from pvt_mm_runtime.checks import check_image_file, check_out_dir
    check_out_dir(out_dir)
    source = Path(inputs)
    images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
        if source.is_dir() else [source] if source.is_file() else []
    problems = []
    for image in images:  # a missing input or an empty folder: named by the tool itself
        try:
            check_image_file(image)
        except ValueError as e:
            problems.append(str(e))
    if len(problems) == 1:
        raise ValueError(problems[0])
    if problems:
        raise ValueError(f'{len(problems)} images cannot be read (nothing was run): '
                         + '; '.join(problems[:5]) + (' ...' if len(problems) > 5 else ''))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        check_inputs(args.inputs, args.out_dir)
        if args.config.endswith('.onnx'):
            from pvt_mm.deploy.infer import infer_onnx
            paths = infer_onnx(args.inputs, args.config, args.out_dir, args.runtime,
                               args.score_thr)
        else:
            paths = infer(args.inputs, args.config, args.checkpoint, args.out_dir, args.score_thr,
                          args.device, args.batch_size)
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        raise SystemExit(f'{type(e).__name__}: {e}') from None
    for path in paths:
        print(path)


if __name__ == '__main__':
    main()
