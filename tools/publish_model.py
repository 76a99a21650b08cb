"""Publish a trained checkpoint as mmdet's ``tools/model_converters/publish_model.py`` does,
safely: keep ``meta`` (as plain data) and ``state_dict``, drop the optimizer, message hub and
schedulers, and add the first 8 hex digits of the file's sha256 to its name.

    python tools/publish_model.py work_dirs/atss/epoch_12.pth atss_pvt_v2_b0.pth
    # -> atss_pvt_v2_b0-1a2b3c4d.pth

The result loads with plain ``torch.load(weights_only=True)`` (no allow-list); pvt_mm's
loaders check the name's hash, so a damaged or renamed copy is refused.
"""
from __future__ import annotations

import pvt_mm._quiet  # noqa: F401  first: drops the pkg_resources deprecation noise

import argparse
import sys
from pathlib import Path

from pvt_mm.loading.checkpoint import publish_checkpoint
from pvt_mm.engine.cli import run_tool


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('src', help='a checkpoint written by tools/train.py')
    p.add_argument('dst', help='output name; -<sha256[:8]> is added before .pth')
    args = p.parse_args(argv)
    published = publish_checkpoint(args.src, args.dst)
    print(published)
    return published


if __name__ == '__main__':
    sys.exit(run_tool(main))
