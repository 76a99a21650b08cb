"""Self CPU time per op of one eager backbone forward, and the speed of its matmuls.

    python tools/profile_ops.py --arch small --shape 800 1333 --mode fp32 bf16 --threads 2

Measure on an idle machine (docs/benchmarks.md, "Deployment", quotes this for the bound of
the eager path against OpenVINO). See pvt_mm/analysis/op_profile.py.
"""
from __future__ import annotations

import argparse

import pvt_mm._quiet  # noqa: F401,E402  first: drops the pkg_resources deprecation noise

from pvt_mm.analysis.models import check_shape  # noqa: E402
from pvt_mm.analysis.op_profile import profile_backbone  # noqa: E402
from pvt_mm.arch import check_arch  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arch', required=True, help='backbone variant (tiny..large, b0..b5, b2_li)')
    p.add_argument('--shape', type=int, nargs='+', default=[800, 1333], help='H [W]')
    p.add_argument('--mode', nargs='+', choices=('fp32', 'bf16'), default=['fp32'])
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    p.add_argument('--top', type=int, default=10, help='ops listed')
    args = p.parse_args(argv)
    arch, shape = check_arch(args.arch), check_shape(args.shape)
    for mode in args.mode:
        print(f'== {arch} {mode} 1x3x{shape[0]}x{shape[1]}')
        print(profile_backbone(arch, shape, mode, args.threads).format(args.top))


if __name__ == '__main__':
    main()
