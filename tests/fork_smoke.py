"""Smoke run of pvt_mm on whichever mmengine / mmcv / mmdet / mmseg are importable (a script,
not a test module: tests/test_install.py runs it with the maintained onedl-* forks shadowing
OpenMMLab's packages).

    PYTHONPATH=FORKS_DIR .venv/bin/python tests/fork_smoke.py WORK_DIR [--expect onedl]

Checks, in one process: ``import pvt_mm`` (and which distributions provide the four imports),
one zoo config per family (configs/*.py: RetinaNet, Mask R-CNN, Semantic FPN, ATSS, GFL,
Cascade, Sparse R-CNN, DETR, Deformable DETR, DINO) built on the meta device with the parameter
count of configs/metafile.yml, the demo detector and segmentor trained two iterations and
tested by tools/train.py / tools/test.py's entry points on a tiny demo dataset, and the trained
detector exported end to end to ONNX and run by ONNX Runtime. Prints one line per check.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DET = ROOT / 'configs/demo/atss_pvtv2-b0_fpn_demo.py'
SEG = ROOT / 'configs/demo/fpn_pvtv2-b0_demo-seg.py'
# the variant token of a configs/*.py name (removed, the rest names the config's family),
# smallest variants first
VARIANT = re.compile(r'_pvt_(?:v2_)?([tsml]|b\d(?:_li)?)(?=_)')
SIZE_ORDER = ['t', 'b0', 'b1', 's', 'b2_li', 'b2', 'm', 'b3', 'l', 'b4', 'b5']
# parameters a fork's head adds to the published (OpenMMLab) count: onedl-mmdetection 3.5's
# DINO decoder embeds 4-d reference boxes (ref_point_head: 1024 inputs, OpenMMLab's 512)
FORK_HEADS = {'onedl-mmdetection': {'dino_4scale_pvt_v2_b2_8xb2_12e_coco': 256 * 512}}


def report(what: str, start: float) -> None:
    print(f'fork smoke: {what} ({time.perf_counter() - start:.1f} s)', flush=True)


def stack(expect: str | None) -> None:
    start = time.perf_counter()
    import pvt_mm  # noqa: F401  the version check runs here
    from pvt_mm._compat import SUPPORTED, providing_distribution
    found = {m: providing_distribution(m) for m in SUPPORTED}
    missing = [m for m, d in found.items() if d is None]
    assert not missing, f'no known distribution provides {missing}'
    if expect:
        other = [d for d, _ in found.values() if not d.startswith(expect)]
        assert not other, f'expected {expect}* distributions, found {other}'
    report('import pvt_mm on ' + ', '.join(f'{d} {v}' for d, v in found.values()), start)


def zoo() -> None:
    """The smallest variant's config of each family, built on the meta device."""
    import yaml
    from pvt_mm._compat import providing_distribution
    from pvt_mm.analysis.zoo import config_entry, zoo_configs
    start = time.perf_counter()
    published = {m['Name']: m['Metadata']['Parameters'] for m in
                 yaml.safe_load((ROOT / 'configs/metafile.yml').read_text())['Models']}
    families: dict[str, Path] = {}
    for path in sorted(zoo_configs(ROOT / 'configs'),
                       key=lambda p: SIZE_ORDER.index(VARIANT.search(p.stem)[1])):
        families.setdefault(VARIANT.sub('', path.stem), path)
    extra = FORK_HEADS.get(providing_distribution('mmdet')[0], {})
    wrong = []
    for path in families.values():
        params = config_entry(path, flops=False).params
        if params != published[path.stem] + extra.get(path.stem, 0):
            wrong.append(f'{path.name}: {params} parameters, metafile {published[path.stem]}')
    assert not wrong, '; '.join(wrong)
    report(f'{len(families)} zoo configs built, parameter counts as configs/metafile.yml',
           start)


def options(**extra) -> list[str]:
    opts = {'experiment_name': f'fork_{uuid.uuid4().hex[:8]}', 'train_dataloader.batch_size': 2,
            'default_hooks.logger.interval': 1, **extra}
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts.update({f'{loader}.num_workers': 0, f'{loader}.persistent_workers': False})
    return ['--cfg-options'] + [f'{k}={v}' for k, v in opts.items()]


def train_and_test(work: Path) -> Path:
    """Two iterations of each demo model, then the test tool on the checkpoint; returns the
    detector's checkpoint."""
    import pickle

    from mm_helpers import miou_of_saved_predictions  # tests/, this script's folder
    from pvt_mm.demo import SEG_CLASSES, DemoDataSpec, make_demo_data
    from pvt_mm.demo.pipeline import DATA_ENV
    from pvt_mm.engine import cli
    start = time.perf_counter()
    spec = DemoDataSpec(num_train=4, num_val=2)
    data = make_demo_data(work / 'data', spec)
    os.environ[DATA_ENV] = str(data)
    cli.train_main([str(DET), '--work-dir', str(work / 'det'),
                    *options(**{'train_cfg.max_epochs': 1})])
    det_ckpt = work / 'det/epoch_1.pth'
    cli.test_main([str(DET), str(det_ckpt), '--work-dir', str(work / 'det'), '--out',
                   str(work / 'det/results.pkl'), *options()])
    with open(work / 'det/results.pkl', 'rb') as f:  # written by this run
        dumped = pickle.load(f)
    assert len(dumped) == spec.num_val, len(dumped)  # one prediction per val image
    assert all(d['pred_instances']['bboxes'].shape[-1] == 4 for d in dumped)
    cli.train_main([str(SEG), '--work-dir', str(work / 'seg'),
                    *options(**{'train_cfg.max_iters': 2, 'train_cfg.val_interval': 2,
                                'default_hooks.checkpoint.interval': 2})])
    metrics = cli.test_main([str(SEG), str(work / 'seg/iter_2.pth'), '--work-dir',
                             str(work / 'seg'), '--out', str(work / 'seg/pred'), *options()])
    # the reported mIoU is that of the label maps the test saved, against the annotations
    recomputed = miou_of_saved_predictions(work / 'seg/pred', data / 'ade/annotations/validation',
                                           len(SEG_CLASSES))
    assert abs(metrics['mIoU'] - recomputed) <= 0.01, (metrics, recomputed)
    report('detector and segmentor trained 2 iterations and tested', start)
    return det_ckpt


def export(work: Path, checkpoint: Path) -> None:
    import numpy as np
    import onnxruntime as ort
    from pvt_mm.deploy.end2end import export_end2end
    start = time.perf_counter()
    result = export_end2end(DET, work / 'atss.onnx', str(checkpoint), shape=(128, 128))
    session = ort.InferenceSession(str(result.path), providers=['CPUExecutionProvider'])
    image = np.random.default_rng(0).uniform(0, 255, (1, 3, 96, 128)).astype(np.float32)
    outputs = dict(zip(result.output_names, session.run(None, {result.input_name: image})))
    assert outputs['boxes'].shape[-1] == 4 and outputs['num_dets'].shape == (1,), outputs
    report('detector exported end to end to ONNX and run by ONNX Runtime', start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('work_dir', type=Path)
    parser.add_argument('--expect', help="the distributions' name prefix, e.g. onedl")
    args = parser.parse_args(argv)
    stack(args.expect)
    zoo()
    export(args.work_dir, train_and_test(args.work_dir))
    print('fork smoke: ok')


if __name__ == '__main__':
    sys.exit(main())
