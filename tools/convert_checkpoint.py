"""Convert a PVT checkpoint (official whai362/PVT, mmdet, timm, transformers or pvt_mm layout;
a ``.pth`` or ``.safetensors`` file, a transformers folder, or a whole mmengine
detector/segmentor checkpoint) to pvt_mm's, or to a transformers folder.

    python tools/convert_checkpoint.py pvt_small.pth pvt_small_pvtmm.pth --arch small
    python tools/convert_checkpoint.py pvt_v2_b2.pth pvt_v2_b2.safetensors
    python tools/convert_checkpoint.py HF_FOLDER pvt_v2_b2.safetensors --arch b2
    python tools/convert_checkpoint.py --to transformers pvt_v2_b2.pth OUT_DIR

With ``--arch`` the result is also loaded into that backbone with ``strict=True`` (a folder's
``config.json`` must name the same variant). The output is written to a temporary file beside
DST and renamed into place when complete; DST may not be SRC (nor a link to it).

``--to transformers`` writes OUT_DIR/config.json + OUT_DIR/model.safetensors, which
``transformers.PvtV2Model.from_pretrained(OUT_DIR)`` (v1: ``PvtModel``; with a classifier head in
SRC: ``Pvt(V2)ForImageClassification``) loads; the variant comes from ``--arch`` or from the
weights' shapes. transformers is not needed to write it.
"""
from __future__ import annotations

import pvt_mm._quiet  # noqa: F401  first: drops the pkg_resources deprecation noise

import argparse
import os
import sys
from pathlib import Path

import torch

from pvt_mm.arch import ARCHS, PVTArch
from pvt_mm.engine.cli import run_tool
from pvt_mm.loading.checkpoint import (FORMATS, check_state_dict, checkpoint_format,
                                       read_checkpoint, write_checkpoint)
from pvt_mm.loading.convert import CheckpointError, convert_pvt_checkpoint, unwrap_state_dict
from pvt_mm.loading.convert_hf import classifier_parts, from_transformers
from pvt_mm.loading.hf_folder import (arch_from_config, check_folder_variant, describe,
                                      folder_weights, infer_arch, read_hf_config,
                                      write_transformers_folder)
from pvt_mm.models.backbones import build_pvt

TARGETS = ('pvt_mm', 'transformers')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('src', type=Path, help='checkpoint file or transformers folder to convert')
    p.add_argument('dst', type=Path,
                   help='where to write the pvt_mm state dict (--to transformers: a folder)')
    p.add_argument('--to', choices=TARGETS, default='pvt_mm',
                   help='output layout (default pvt_mm; transformers: config.json + '
                        'model.safetensors in DST)')
    p.add_argument('--arch', choices=sorted(ARCHS), help='verify by loading into this variant')
    p.add_argument('--prefix', help="take only keys under this prefix (e.g. 'backbone.')")
    p.add_argument('--format', choices=FORMATS,
                   help='output format (default: safetensors for a .safetensors DST, else torch)')
    return p.parse_args(argv)


def check_paths(src: Path, dst: Path) -> None:
    """Refuse a DST that is SRC, a link to it or the same file (inode) under another name:
    writing it would destroy the input."""
    if src.resolve() == dst.resolve() or (dst.exists() and src.exists()
                                          and os.path.samefile(src, dst)):
        raise SystemExit(f'error: DST {dst} is the input file {src} (or a link to it); '
                         'write the converted checkpoint to another path')


def load_into(spec: PVTArch, state_dict: dict, source: Path, pretrain_img_size: int = 224
              ) -> None:
    """Build variant ``spec`` and load ``state_dict`` with ``strict=True`` (errors name both).
    The shapes are compared on the meta device first: a variant (a folder's config.json) that
    does not fit the weights is refused before anything of its size is allocated."""
    with torch.device('meta'):
        check_state_dict(build_pvt(spec, pretrain_img_size=pretrain_img_size), state_dict,
                         source=source)
    model = build_pvt(spec, pretrain_img_size=pretrain_img_size)
    model.load_state_dict(state_dict, strict=True)


def variant(args: argparse.Namespace, state_dict: dict | None = None) -> PVTArch | None:
    """``--arch``, checked against a folder's config.json (before any tensor is read); else
    with ``state_dict``: the folder's config.json, or the table entry the shapes fit."""
    config = args.src.is_dir() and (args.src / 'config.json').is_file()
    if args.arch:
        spec = ARCHS[args.arch]
        check_folder_variant(args.src, spec,
                             f'--arch {args.arch} ({spec.backbone_type} {args.arch})')
        return spec
    if state_dict is None:
        return None
    if config:
        return arch_from_config(read_hf_config(args.src), str(args.src / 'config.json'))
    return ARCHS[infer_arch(state_dict)]


def to_transformers(args: argparse.Namespace, raw: dict, state_dict: dict) -> None:
    """Write the transformers folder, then read it back: it must give ``state_dict`` exactly."""
    out = args.dst
    if out.exists() and not out.is_dir():
        raise SystemExit(f'error: --to transformers writes a folder; {out} is a file')
    target = out / 'model.safetensors'
    if (args.src.is_dir() and out.resolve() == args.src.resolve()) or (
            target.exists() and os.path.samefile(target, folder_weights(args.src)
                                                 if args.src.is_dir() else args.src)):
        raise SystemExit(f'error: DST {out} holds the input; write to another folder')
    spec = variant(args, state_dict)
    pos = state_dict.get('stages.0.pos_embed')
    size = 4 * round(pos.shape[1] ** 0.5) if pos is not None else 224  # v1: square grids
    load_into(spec, state_dict, args.src, size)
    folder, config, notes = write_transformers_folder(
        state_dict, out, spec, classifier_parts(unwrap_state_dict(raw, args.prefix)))
    back = from_transformers(read_checkpoint(folder_weights(folder)), log=False)
    if back.keys() != state_dict.keys() or any(not back[k].equal(v)
                                                for k, v in state_dict.items()):
        raise CheckpointError(f'{folder}: the written folder does not read back exactly')
    n = sum(v.numel() for v in state_dict.values())
    print(f'wrote {config["architectures"][0]} ({describe(spec)}: {len(state_dict)} tensors, '
          f'{n / 1e6:.2f}M values) to {folder}/config.json + model.safetensors')
    for note in notes:
        print(f'note: {note}')


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_paths(args.src, args.dst)
    weights = folder_weights(args.src) if args.src.is_dir() else args.src
    if args.to == 'pvt_mm' and weights != args.src:
        check_paths(weights, args.dst)
    spec = variant(args)
    raw = read_checkpoint(weights)
    state_dict = convert_pvt_checkpoint(raw, prefix=args.prefix)
    if args.to == 'transformers':
        to_transformers(args, raw, state_dict)
        return
    fmt = checkpoint_format(args.dst, args.format)
    if spec is not None:
        load_into(spec, state_dict, args.src)
    write_checkpoint(state_dict, args.dst, fmt)
    n = sum(v.numel() for v in state_dict.values())
    print(f'wrote {len(state_dict)} tensors ({n / 1e6:.2f}M values, {fmt}) to {args.dst}')


if __name__ == '__main__':
    sys.exit(run_tool(main))  # a user error: one line (--debug: the traceback)
