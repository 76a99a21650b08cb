"""Parameters and FLOPs of the model-zoo configs (configs/*.py), as a markdown table.

    python tools/zoo_table.py                       # every config (FLOPs at 1333x800 / 512x512)
    python tools/zoo_table.py configs/detr_pvt_s_8x2_50ep_coco.py --no-flops
    python tools/zoo_table.py --cache work_dirs/zoo_table.json   # reuse earlier counts

Parameters are counted on the meta device; FLOPs (multiply-accumulates, the PVT papers'
convention, see tools/get_flops.py) on one image of the task's standard size; how heads that
cannot run on the meta device are counted: pvt_mm/analysis/zoo.py.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pvt_mm._quiet  # noqa: F401  first: drops the pkg_resources deprecation noise
from pvt_mm.analysis.zoo import markdown_rows, zoo_configs, zoo_table

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs'


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('configs', nargs='*', help=f'config files (default: all of {CONFIG_DIR})')
    p.add_argument('--flops', action=argparse.BooleanOptionalAction, default=True,
                   help='count FLOPs too (default: yes)')
    p.add_argument('--cache', help='JSON file of earlier counts to reuse and extend')
    args = p.parse_args(argv)
    paths = [Path(c) for c in args.configs] or zoo_configs(CONFIG_DIR)
    missing = [str(c) for c in paths if not c.is_file()]
    if missing:
        raise SystemExit(f'config file not found: {", ".join(missing)}')
    print(markdown_rows(zoo_table(paths, flops=args.flops, cache=args.cache)))


if __name__ == '__main__':
    main()
