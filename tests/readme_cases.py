"""How tests/test_readme.py runs each command and snippet of README.md and of the docs pages
(its ``PAGES``): THE list of
substitutions (smoke sizes, placeholders, a tiny checkpoint) and of commands that need what a
test cannot have (COCO, ImageNet, a GPU, a download, ``make``).

Every ```bash command (continuation lines joined, as the shell does) and every ```python block
of those pages must have an entry here, keyed by its exact text (a command on two pages runs
once, where it first appears): a command without one fails the test, so a new command cannot
be added untested. An entry is

* ``run(*subs)``: run it after the substitutions (each ``(old, new)``, applied in order to the
  text, on top of :data:`COMMON`); it must exit 0;
* ``error(pattern, *subs)``: it needs data or hardware the test does not have: it must exit
  non-zero and print ``pattern`` (a regex), without a Python traceback;
* ``not_run(reason)``: not executed (``make`` targets: installing, the 10-minute demo, the
  test suite itself).

Commands run in a sandbox folder (``.venv`` and ``tools`` linked, ``configs`` copied, the demo
data generated small), so nothing they write lands in the repository. The sandbox also holds
random-weight checkpoints named as the README names them: ``pvt_small.pth``,
``pvt_v2_b2.pth`` (the official layout), ``{CKPT}`` (a whole demo ATSS) and an
``{IMAGE}``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

IMAGE = 'data/demo/coco/val/val_00001.jpg'  # an image of the small demo data
DEMO_DET = 'configs/demo/atss_pvtv2-b0_fpn_demo.py'
CKPT = 'ckpt/atss_demo.pth'  # a whole ATSS model with random weights, made by the test
SMALL_DATA = '--num-train 8 --num-val 4'
COCO_MISSING = r'(inputs are missing|does not exist)'

# Applied to every command and snippet before its own substitutions (smoke sizes).
COMMON: list[tuple[str, str]] = [
    ('--shape 224 --shape 800 1333', '--shape 64'),
    ('--shape 800 1333', '--shape 64'),
    ('--shape 800 1344', '--shape 64'),
    ('--shape 512', '--shape 64'),
    ('--runs 5', '--runs 1'),
    ('--warmup 1', '--warmup 0'),
]


@dataclass(frozen=True)
class Case:
    kind: str  # 'run', 'error' or 'not_run'
    subs: tuple[tuple[str, str], ...] = ()
    pattern: str = ''  # 'error': what the output must say
    reason: str = ''  # 'not_run'
    timeout: int = 180
    needs: str = ''  # the key of a command that must have run first (it wrote this one's input)


def run(*subs: tuple[str, str], timeout: int = 180, needs: str = '') -> Case:
    return Case('run', tuple(subs), timeout=timeout, needs=needs)


def error(pattern: str, *subs: tuple[str, str]) -> Case:
    return Case('error', tuple(subs), pattern=pattern)


def not_run(reason: str) -> Case:
    return Case('not_run', reason=reason)


FAST_BENCH = ('--mode fp32 bf16', '--mode fp32 bf16 --runs 1 --warmup 0 --memory-modes')
SMALL_ARCH = ('--arch small b2', '--arch b0')  # benchmarks: the smallest variant
CONVERT_B2 = ('.venv/bin/python tools/convert_checkpoint.py pvt_v2_b2.pth '
              'work_dirs/checkpoints/pvt_v2_b2.safetensors --arch b2')
TO_HF = ('.venv/bin/python tools/convert_checkpoint.py --to transformers '
         'work_dirs/checkpoints/pvt_v2_b2.safetensors work_dirs/pvt_v2_b2_hf --arch b2')
EXPORT_B2 = '.venv/bin/python tools/export_onnx.py --arch b2 --out work_dirs/onnx/pvt_v2_b2.onnx'
EXPORT_E2E = ('.venv/bin/python tools/export_onnx.py --config '
              'configs/demo/atss_pvtv2-b0_fpn_demo.py --out work_dirs/onnx/atss.onnx --end2end')

OWN_DET = ('.venv/bin/python tools/swap_backbone.py mmdet::retinanet/retinanet_r50_fpn_1x_coco.py '
           '--arch b0 --data data/demo/coco --out work_dirs/mine/retinanet_b0_mine.py')
OWN_TRAIN = '.venv/bin/python tools/train.py work_dirs/mine/retinanet_b0_mine.py'

CASES: dict[str, Case] = {
    # ---- Quick start -------------------------------------------------------------------------
    'make demo': not_run('installs the stack if needed and trains for ~10 minutes; the demo '
                         'pipeline and its plan are tested in tests/test_tools.py and '
                         'tests/test_demo_plan.py'),
    'make test': not_run('the test suite itself'),
    'make install': not_run('installs the stack: .ci/run runs it on every submission'),
    # ---- docs/install.md: the fork stack (tests/test_install.py installs the same pins into
    # a folder of its own and runs tests/fork_smoke.py on them) ---------------------------------
    'python -m pip install onedl-mmengine==0.10.12': not_run(
        'installs the maintained forks into your environment; tested by test_install.py'),
    'MMCV_WITH_OPS=1 python -m pip install --no-build-isolation onedl-mmcv==2.3.6': not_run(
        'compiles onedl-mmcv (~8 min); tested with the prebuilt wheel by test_install.py'),
    'python -m pip install --no-build-isolation onedl-mmdetection==3.5.1 '
    'onedl-mmsegmentation==1.4.2': not_run('installs the forks; tested by test_install.py'),
    'python -m pip install -e .': not_run('installs pvt_mm into your environment (make install '
                                          'runs the same editable install)'),
    # ---- docs/fast_path.md, docs/backbones.md ------------------------------------------------
    "# a variant of the attention: subclass, override the reference method, assign": run(),
    '# a backbone from Python: build, forward, read the stage maps': run(),
    # ---- Using the backbones (a config fragment: must at least be valid Python) -------------
    "custom_imports = dict(imports=['pvt_mm'], allow_failed_imports=False)": run(),
    # ---- docs/weights.md -----------------------------------------------------------------------
    '.venv/bin/python tools/convert_checkpoint.py pvt_small.pth '
    'work_dirs/checkpoints/pvt_small_pvtmm.pth --arch small': run(),
    CONVERT_B2: run(),
    TO_HF: run(needs=CONVERT_B2),  # reads the converted file
    '.venv/bin/python tools/convert_checkpoint.py work_dirs/pvt_v2_b2_hf '
    'work_dirs/checkpoints/pvt_v2_b2_back.safetensors --arch b2': run(),  # after TO_HF
    '.venv/bin/python tools/publish_model.py work_dirs/demo/det/final.pth '
    'work_dirs/atss_pvtv2-b0_demo.pth': run(('work_dirs/demo/det/final.pth', CKPT)),
    # ---- docs/demo.md --------------------------------------------------------------------------
    '.venv/bin/python tools/make_demo_data.py [--out data/demo]':
        run(('[--out data/demo]', f'--out data/demo {SMALL_DATA}')),
    # ---- docs/pictures.md ----------------------------------------------------------------------
    '.venv/bin/python tools/infer.py IMAGE_OR_DIR CONFIG CHECKPOINT --out-dir DIR '
    '[--score-thr 0.3]':
        run(('IMAGE_OR_DIR CONFIG CHECKPOINT', f'{IMAGE} {DEMO_DET} {CKPT}'),
            ('--out-dir DIR', '--out-dir out/infer'), ('[--score-thr 0.3]', '--score-thr 0.3')),
    '.venv/bin/python tools/visualize.py IMAGE --arch small [--checkpoint pvt_small.pth] '
    '--out-dir DIR':
        run(('IMAGE', IMAGE), ('[--checkpoint pvt_small.pth]', '--checkpoint pvt_small.pth'),
            ('--out-dir DIR', '--out-dir out/vis_small')),
    '.venv/bin/python tools/visualize.py IMAGE --config CONFIG --checkpoint CKPT [--point X Y] '
    '[--size 512] [--block -1] --out-dir DIR':
        run(('IMAGE', IMAGE), ('--config CONFIG --checkpoint CKPT',
                               f'--config {DEMO_DET} --checkpoint {CKPT}'),
            ('[--point X Y] [--size 512] [--block -1]', '--point 17 58 --size 96 --block -1'),
            ('--out-dir DIR', '--out-dir out/vis_config')),
    '.venv/bin/python tools/visualize.py data/demo/coco/val/val_00001.jpg --config '
    'configs/demo/atss_pvtv2-b0_fpn_demo.py --checkpoint work_dirs/demo/det/final.pth --size '
    '256 --point 17 58 --out-dir work_dirs/demo/backbone_maps':
        run(('work_dirs/demo/det/final.pth', CKPT)),
    # ---- Data preparation (README, docs/training.md; the COCO configs: no COCO here) ----------
    'export PVT_MM_DATA_ROOT=/mnt/datasets': run(),
    '.venv/bin/python tools/train.py configs/retinanet_pvt_s_fpn_1x_coco.py':
        error('/mnt/datasets/coco/annotations/instances_train2017.json does not exist'),
    '.venv/bin/python tools/train.py configs/retinanet_pvt_s_fpn_1x_coco.py --cfg-options '
    'train_dataloader.dataset.data_root=/mnt/coco/ val_dataloader.dataset.data_root=/mnt/coco/ '
    'test_dataloader.dataset.data_root=/mnt/coco/ '
    'val_evaluator.ann_file=/mnt/coco/annotations/instances_val2017.json '
    'test_evaluator.ann_file=/mnt/coco/annotations/instances_val2017.json':
        error('/mnt/coco/annotations/instances_train2017.json does not exist'),
    # ---- Own data (README, docs/own_data.md; the small demo data, no pretrained file) ---------
    OWN_DET: run(('--out', '--checkpoint none --out')),
    '.venv/bin/python tools/swap_backbone.py mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py'
    ' --arch b0 --data data/demo/ade --classes background circle square triangle star ring '
    '--out work_dirs/mine/upernet_b0_mine.py': run(('--out', '--checkpoint none --out')),
    OWN_TRAIN: run(('_mine.py', '_mine.py --cfg-options train_cfg.max_epochs=1 '
                    'train_cfg.val_interval=2 train_dataloader.batch_size=8'),
                   timeout=300, needs=OWN_DET),
    '.venv/bin/python tools/test.py work_dirs/mine/retinanet_b0_mine.py '
    'work_dirs/retinanet_b0_mine/epoch_12.pth':
        run(('epoch_12.pth', 'epoch_1.pth --cfg-options model.test_cfg.score_thr=0.5'),
            timeout=300, needs=OWN_TRAIN),
    # ---- docs/training.md ----------------------------------------------------------------------
    '.venv/bin/python tools/train.py configs/retinanet_pvt_s_fpn_1x_coco.py [--work-dir DIR] '
    '[--resume [CKPT]] [--amp] [--cfg-options key=value ...] [--launcher pytorch]':
        error(COCO_MISSING, ('[--work-dir DIR] [--resume [CKPT]] [--amp] '
                             '[--cfg-options key=value ...] [--launcher pytorch]',
                             '--work-dir out/train_coco --resume --amp')),
    '.venv/bin/python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR] '
    '[--out FILE]':
        run(('CONFIG CHECKPOINT', f'{DEMO_DET} {CKPT}'),
            ('[--work-dir DIR] [--show-dir DIR] [--out FILE]',
             '--work-dir out/test --show-dir shown --out out/test/results.pkl')),
    'tools/dist_train.sh CONFIG 8 [train.py arguments]':
        error(COCO_MISSING, ('CONFIG 8 [train.py arguments]',
                             'configs/retinanet_pvt_s_fpn_1x_coco.py 1 --work-dir out/dist')),
    'tools/dist_test.sh CONFIG CHECKPOINT 8 [test.py arguments]':
        error(COCO_MISSING, ('CONFIG CHECKPOINT 8 [test.py arguments]',
                             f'configs/retinanet_pvt_s_fpn_1x_coco.py {CKPT} 1 '
                             '--work-dir out/dist')),
    # ---- Swapping (README, docs/configs_and_swap.md) -------------------------------------------
    '.venv/bin/python tools/swap_backbone.py mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py '
    '--arch b2 --out configs/faster-rcnn_pvt_v2_b2_fpn_1x_coco.py': run(),
    # ---- docs/backbones.md: classification with timm (the official file, random weights) ----
    'import timm, pvt_mm': run(),
    '.venv/bin/python tools/eval_imagenet.py /data/imagenet/val --model pvt_v1_small '
    '--checkpoint pvt_small.pth [--batch-size 64] [--workers 2]':
        error(r'/data/imagenet/val', ('[--batch-size 64] [--workers 2]',
                                      '--batch-size 64 --workers 2')),
    # ---- docs/benchmarks.md ---------------------------------------------------------------------
    '.venv/bin/python tools/get_flops.py --arch b2': run(),
    '.venv/bin/python tools/get_flops.py --config configs/retinanet_pvt_s_fpn_1x_coco.py '
    '--shape 800 1333': run(),
    '.venv/bin/python tools/profile_ops.py --arch small --shape 800 1333 --mode fp32 bf16':
        run(('--arch small', '--arch b0')),
    '.venv/bin/python tools/benchmark.py --arch small b2 --shape 224 --shape 800 1333 --mode '
    'fp32 bf16': run(FAST_BENCH, SMALL_ARCH),
    '.venv/bin/python tools/benchmark.py --arch b2 --shape 512 --mode fp32 --runtimes '
    '--contention': run(('--mode fp32', '--mode fp32 --runs 1 --warmup 0 --memory-modes'),
                        ('--arch b2', '--arch b0')),
    '.venv/bin/python tools/benchmark.py --config configs/retinanet_pvt_s_fpn_1x_coco.py '
    '--shape 512 --batch-size 2 --mode train --with-cp':
        run(('--mode train', '--mode train --runs 1 --warmup 0 --memory-modes'),
            ('--batch-size 2', '--batch-size 1'), ('retinanet_pvt_s_', 'retinanet_pvt_v2_b0_')),
    # ---- Deployment (README, docs/deployment.md) -----------------------------------------------
    EXPORT_E2E: run(),  # the whole detector, random weights (the tool says so)
    '.venv/bin/python tools/make_demo_data.py': run(('make_demo_data.py', 'make_demo_data.py '
                                                     f'{SMALL_DATA}')),
    '.venv/bin/python tools/infer.py data/demo/coco/val work_dirs/onnx/atss.onnx --runtime '
    'openvino --out-dir work_dirs/atss_vis': run(needs=EXPORT_E2E),
    '.venv/bin/python tools/test.py configs/demo/atss_pvtv2-b0_fpn_demo.py '
    'work_dirs/onnx/atss.onnx --runtime onnxruntime': run(needs=EXPORT_E2E),
    '.venv/bin/python tools/export_onnx.py --config configs/demo/fpn_pvtv2-b0_demo-seg.py '
    '--out work_dirs/onnx/seg.onnx --end2end': run(),
    'from pvt_mm_runtime import load_predictor   # numpy, OpenCV and a runtime: no PyTorch':
        run(needs=EXPORT_E2E),
    '# the end-to-end graph from plain ONNX Runtime, as the predictor runs it':
        run(needs=EXPORT_E2E),  # also run on a model with detections: test_deploy_e2e
    EXPORT_B2: run(('--out work_dirs/onnx/pvt_v2_b2.onnx',
                    '--out work_dirs/onnx/pvt_v2_b2.onnx --shape 64')),
    '.venv/bin/python tools/export_onnx.py --config configs/demo/atss_pvtv2-b0_fpn_demo.py '
    '--out work_dirs/onnx/atss_raw.onnx --shape 800 1344': run(),
    'import numpy as np': run(needs=EXPORT_B2),  # reads the exported graph
}


def command_key(command: str) -> str:
    """A bash command's key: its text with the trailing comment dropped, spaces collapsed."""
    return ' '.join(re.sub(r'\s+#.*$', '', command.strip()).split())


def snippet_key(snippet: str) -> str:
    """A Python snippet's key: its first line."""
    return snippet.strip().splitlines()[0].strip()


def substitute(text: str, case: Case) -> str:
    for old, new in [*COMMON, *case.subs]:
        text = text.replace(old, new)
    return text
