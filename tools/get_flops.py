"""Parameters and FLOPs of a PVT backbone or of a whole detector / segmentor config.

    python tools/get_flops.py --arch b2                       # ImageNet size, with the head
    python tools/get_flops.py --arch small --shape 800 1333   # backbone only
    python tools/get_flops.py --config configs/retinanet_pvt_s_fpn_1x_coco.py --shape 800 1333

"FLOPs" are multiply-accumulates counted as the official whai362/PVT get_flops.py does
(mmcv's rules plus the attention matrix products q k^T and attn v); see
pvt_mm/analysis/flops.py. At 224x224 a backbone is counted with the ImageNet classifier head
(as the published figures are) unless --no-head is given, and compared with the published
GFLOPs.
"""
from __future__ import annotations

import argparse

import pvt_mm._quiet  # noqa: F401,E402  first: drops the pkg_resources deprecation noise

from mmengine.config import DictAction  # noqa: E402

from pvt_mm.analysis.flops import (IMAGENET_SIZE, PUBLISHED_IMAGENET_GFLOPS,  # noqa: E402
                                   backbone_complexity, config_complexity, format_complexity)
from pvt_mm.analysis.models import check_shape  # noqa: E402
from pvt_mm.arch import check_arch  # noqa: E402
from pvt_mm.engine.runtime import read_model_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--arch', help='backbone variant: tiny/small/medium/large, b0..b5, b2_li '
                                    '(or an official name such as pvt_v2_b2)')
    src.add_argument('--config', help='mmdet / mmseg config file')
    p.add_argument('--shape', type=int, nargs='+', default=list(IMAGENET_SIZE),
                   help='input size: H [W] (default 224)')
    p.add_argument('--head', action=argparse.BooleanOptionalAction, default=None,
                   help='add the ImageNet classifier head (default: only at 224x224)')
    p.add_argument('--attn-mode', choices=('sdpa', 'explicit'), default='sdpa',
                   help='attention implementation to count (the count is the same)')
    p.add_argument('--depth', type=int, default=None,
                   help='module depth of the breakdown (default 2 for a backbone, 1 for a config)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        shape = check_shape(args.shape)
        arch = check_arch(args.arch) if args.arch else None
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if arch:
        head = shape == IMAGENET_SIZE if args.head is None else args.head
        result = backbone_complexity(arch, shape, with_head=head, attn_mode=args.attn_mode)
        print(format_complexity(result, f'PVT {arch} backbone' + (' + ImageNet head' * head),
                                args.depth or 2))
        if head and shape == IMAGENET_SIZE and arch in PUBLISHED_IMAGENET_GFLOPS:  # not huge
            pub = PUBLISHED_IMAGENET_GFLOPS[arch]
            print(f'Published ImageNet GFLOPs: {pub:.1f} G (measured {result.gflops:.2f} G, '
                  f'{100 * (result.gflops / pub - 1):+.1f}%)')
    else:
        if args.head:
            raise SystemExit('--head applies to --arch only')
        try:
            cfg = read_model_config(args.config, args.cfg_options)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(str(e)) from None
        result = config_complexity(cfg, shape)
        print(format_complexity(result, f'{args.config}', args.depth or 1))


if __name__ == '__main__':
    main()
