"""Generate the built-in demo dataset (deterministic, a few seconds).

    python tools/make_demo_data.py [--out data/demo] [--num-train 600] [--num-val 100]
        [--size 128] [--seed 0] [--force]

Writes COCO-format instances (boxes + RLE masks) and an ADE20K-style semantic folder; see
:mod:`pvt_mm.demo.dataset` for the layout.
"""
import pvt_mm._quiet  # noqa: F401  first: drops the pkg_resources deprecation noise

import argparse

from pvt_mm.demo import DemoDataSpec, SceneSpec, make_demo_data


def main() -> None:
    defaults = DemoDataSpec()
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/demo', help='output folder')
    parser.add_argument('--num-train', type=int, default=defaults.num_train)
    parser.add_argument('--num-val', type=int, default=defaults.num_val)
    parser.add_argument('--size', type=int, default=defaults.scene.size, help='image side (px)')
    parser.add_argument('--seed', type=int, default=defaults.seed)
    parser.add_argument('--force', action='store_true', help='regenerate even if up to date')
    args = parser.parse_args()
    spec = DemoDataSpec(num_train=args.num_train, num_val=args.num_val, seed=args.seed,
                        scene=SceneSpec.scaled(args.size))
    make_demo_data(args.out, spec, force=args.force)


if __name__ == '__main__':
    main()
