"""Your own data in one step: ``tools/swap_backbone.py CONFIG --arch ARCH --data DIR`` on a
small synthetic COCO folder (5 classes, category ids neither contiguous nor from 1) and a
small mmseg folder (5 classes, 255 ignored). Every head's ``num_classes`` is checked on the
written config for single-stage, two-stage with masks, cascade, DETR-family and Sparse R-CNN
detectors and two segmentors, and on the built models; Mask R-CNN takes one training step on
its own pipeline's batch; FCOS and DeepLabV3+ train two iterations, test, export end to end and
infer through the tools' code (UPerNet's pyramid pooling does not export with a dynamic image
size)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from mmengine.config import Config
from mmengine.dataset import pseudo_collate

from mm_helpers import cached_config_index  # noqa: F401  (fixture)
from mm_helpers import build_model, train_one_step
from pvt_mm import swap
from pvt_mm.demo import DemoDataSpec, SceneSpec, make_demo_data

ROOT = Path(__file__).resolve().parents[1]
# demo category id k (1..5) -> an id of "your" file: neither contiguous nor from 1
CAT_IDS = {1: 12, 2: 3, 3: 40, 4: 7, 5: 21}
DET_CLASSES = ('circle', 'square', 'triangle', 'star', 'ring')
SEG_CLASSES = ('background', 'circle', 'square', 'triangle', 'star or ring')
B = 'model.roi_head.bbox_head'
# name -> (stock config, every place num_classes must be set)
DET = {
    'fcos': ('mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', ['model.bbox_head']),
    'mask_rcnn': ('mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
                  [B, 'model.roi_head.mask_head']),
    'cascade_mask_rcnn': ('mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py',
                          [f'{B}[{i}]' for i in range(3)] + ['model.roi_head.mask_head']),
    'dino': ('mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py', ['model.bbox_head']),
    'sparse_rcnn': ('mmdet::sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py',
                    [f'{B}[{i}]' for i in range(6)]),
}
SEG = {
    'upernet': ('mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py',
                ['model.decode_head', 'model.auxiliary_head']),
    'deeplabv3plus': ('mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb2-40k_cityscapes-'
                      '512x1024.py', ['model.decode_head', 'model.auxiliary_head']),
}
TRAINED = ('fcos', 'deeplabv3plus')  # tools/train.py's code, then test, export, infer
STEPPED = ('mask_rcnn',)  # one training step on its pipeline's batch; the others: built
pytestmark = pytest.mark.usefixtures('cached_config_index')


@pytest.fixture(scope='module')
def folders(tmp_path_factory) -> dict[str, Path]:
    """The demo's scenes at 64 px (4 train, 2 val), rewritten as a user's data would be."""
    root = make_demo_data(tmp_path_factory.mktemp('own') / 'demo',
                          DemoDataSpec(num_train=4, num_val=2, scene=SceneSpec.scaled(64)))
    for split in ('train', 'val'):
        path = root / 'coco' / 'annotations' / f'instances_{split}.json'
        data = json.loads(path.read_text())
        for c in data['categories']:
            c['id'] = CAT_IDS[c['id']]
        for a in data['annotations']:
            a['category_id'] = CAT_IDS[a['category_id']]
        path.write_text(json.dumps(data))
    for png in (root / 'ade' / 'annotations').rglob('*.png'):
        label = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        label[label >= 4] = 4  # star and ring: one class
        label[:2] = 255  # an ignored border
        cv2.imwrite(str(png), label)
    (root / 'ade' / 'classes.txt').write_text('\n'.join(SEG_CLASSES) + '\n')
    return {'coco': root / 'coco', 'ade': root / 'ade'}


def _num_classes(node, where: str = 'model') -> dict[str, int]:
    """Every ``num_classes`` of a model config, by the path of the dict holding it."""
    found = {}
    if isinstance(node, dict):
        if 'num_classes' in node:
            found[where] = node['num_classes']
        for k, v in node.items():
            if k not in ('num_classes', 'train_cfg', 'test_cfg'):
                found.update(_num_classes(v, f'{where}.{k}'))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            found.update(_num_classes(v, f'{where}[{i}]'))
    return found


def _write(name: str, config: str, folders: dict, tmp_path: Path, **kwargs) -> Config:
    kind = 'ade' if config.startswith('mmseg') else 'coco'
    out = swap.write_swapped_config(config, 'b0', tmp_path / f'{name}_b0.py',
                                    data=folders[kind], checkpoint=None, **kwargs)
    return Config.fromfile(str(out))


def _one_training_step(cfg: Config) -> float:
    """One train_step on a batch the config's own train pipeline makes from the folder
    (seeded; two-stage detectors sample fewer proposals and RoIs: CPU time only)."""
    from mmengine.registry import DATASETS, init_default_scope
    from mmengine.runner import set_random_seed
    set_random_seed(0)
    train_cfg = cfg.model.get('train_cfg') or {}
    if 'rpn_proposal' in train_cfg:
        train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
        for stage in train_cfg.rcnn if isinstance(train_cfg.rcnn, list) else [train_cfg.rcnn]:
            stage.sampler.num = 64
    init_default_scope(cfg.default_scope)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    model = build_model(cfg)
    # detectors one image (a padded image's DETR masks are empty at the 1x1 level: NaN),
    # segmentors two (BatchNorm after the ASPP's image pooling)
    batch = [dataset[i] for i in range(2 if cfg.default_scope == 'mmseg' else 1)]
    loss, changed = train_one_step(model, cfg, pseudo_collate(batch))
    assert any(changed.values())
    return loss


@pytest.mark.parametrize('name', list(DET) + list(SEG))
def test_every_head_gets_the_classes_and_the_config_trains(name, folders, tmp_path):
    config, heads = {**DET, **SEG}[name]
    seg = name in SEG
    classes = SEG_CLASSES if seg else DET_CLASSES
    stock = _num_classes(swap.load_stock_config(config).model.to_dict())
    cfg = _write(name, config, folders, tmp_path)
    found = _num_classes(cfg.model.to_dict())
    rpn = {k: v for k, v in found.items() if '.rpn_head' in k}
    assert {k: v for k, v in found.items() if k not in rpn} == dict.fromkeys(heads, 5)
    assert rpn == {k: v for k, v in stock.items() if '.rpn_head' in k}  # left alone
    assert all(stock[h] != 5 for h in heads)  # the stock config had other counts
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = cfg[loader].dataset
        assert dataset.metainfo.classes == classes, loader
        assert len(dataset.metainfo.palette) == 5 and (0, 0, 0) not in dataset.metainfo.palette
        assert dataset.data_root == str(folders['ade' if seg else 'coco']) + '/'
    if seg:
        assert cfg.train_dataloader.dataset.type == 'BaseSegDataset'
        assert cfg.model.data_preprocessor.size[0] <= 64  # crops fit the 64 px images
    else:
        assert cfg.val_evaluator.ann_file.endswith('coco/annotations/instances_val.json')
        assert cfg.test_evaluator.ann_file == cfg.val_evaluator.ann_file
        masks = 'mask' in name
        assert ('segm' in str(cfg.val_evaluator.metric)) == masks
        resize = [t for t in cfg.test_dataloader.dataset.pipeline if t.type == 'Resize'][0]
        assert min(resize.scale) == 64  # fitted to the images (stock: 1333x800)
    if name == 'deeplabv3plus':  # its dilated ResNet ran at output stride 8, PVT's is 32
        text = Path(cfg.filename).read_text()
        assert '# NOTE: model.backbone: the stock ResNetV1c' in text
        assert 'output stride 8 -> 32' in text
        assert cfg.model.decode_head.c1_in_channels == 32
    if name in TRAINED:
        return  # trained, tested and exported below
    if name in STEPPED:
        assert math.isfinite(_one_training_step(cfg))
        return
    model = build_model(cfg)  # the built heads (Sparse R-CNN: random-init stages refine
    for head in heads:        # boxes to negative sizes, stock or swapped; RoIAlign asserts)
        module = model
        for part in re.findall(r'\w+|\[\d+\]', head.split('.', 1)[1]):
            module = module[int(part[1:-1])] if part.startswith('[') else getattr(module, part)
        stages = list(module) if type(module).__name__ == 'ModuleList' else [module]
        assert [m.num_classes for m in stages] == [5] * len(stages), head  # cascade masks: 3
    if name == 'dino':  # the denoising queries take the head's classes at build time
        assert model.dn_query_generator.num_classes == 5


def test_coco_category_ids_map_to_the_named_classes(folders, tmp_path):
    """mmdet's CocoDataset maps category ids through the classes' names: every label the
    written config's dataset gives names the category of its annotation."""
    from mmengine.registry import DATASETS, init_default_scope
    cfg = _write('fcos', DET['fcos'][0], folders, tmp_path)
    init_default_scope('mmdet')
    dataset = DATASETS.build(cfg.val_dataloader.dataset)
    data = json.loads((folders['coco'] / 'annotations/instances_val.json').read_text())
    names = {c['id']: c['name'] for c in data['categories']}
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        anns = [a for a in data['annotations'] if a['image_id'] == info['img_id']]
        labels = [inst['bbox_label'] for inst in info['instances']]
        assert [DET_CLASSES[k] for k in labels] == [names[a['category_id']] for a in anns]


def test_classes_scale_and_refusals(folders, tmp_path):
    cfg = _write('fcos', DET['fcos'][0], folders, tmp_path, classes=['star', 'circle'],
                 scale=[96, 80])
    assert cfg.train_dataloader.dataset.metainfo.classes == ('circle', 'star')  # file order
    assert cfg.model.bbox_head.num_classes == 2
    assert [t.scale for t in cfg.test_dataloader.dataset.pipeline if 'scale' in t] == [(96, 80)]
    stock = _write('fcos', DET['fcos'][0], folders, tmp_path, scale=0)
    assert [t.scale for t in stock.test_dataloader.dataset.pipeline if 'scale' in t] == \
        [(1333, 800)]
    with pytest.raises(swap.SwapError, match=r'mmseg config.*COCO'):
        _write('upernet', SEG['upernet'][0], {'ade': folders['coco']}, tmp_path)
    with pytest.raises(swap.SwapError, match='not categories'):
        _write('fcos', DET['fcos'][0], folders, tmp_path, classes=['hexagon'])
    with pytest.raises(swap.SwapError, match='stuff'):  # panoptic: things + stuff
        _write('panoptic', 'mmdet::panoptic_fpn/panoptic-fpn_r50_fpn_1x_coco.py', folders,
               tmp_path)


def test_bad_folders_are_named(folders, tmp_path):
    from pvt_mm.swap.data import inspect_dataset
    bad = tmp_path / 'seg'
    for sub in ('images/training', 'annotations/training', 'images/validation',
                'annotations/validation'):
        (bad / sub).mkdir(parents=True)
    for split in ('training', 'validation'):
        cv2.imwrite(str(bad / 'images' / split / 'a.jpg'), np.zeros((40, 40, 3), np.uint8))
        cv2.imwrite(str(bad / 'annotations' / split / 'a.png'), np.full((40, 40), 7, np.uint8))
    (bad / 'classes.txt').write_text('sky\nroad\n')
    with pytest.raises(swap.SwapError, match=r'label values \[7\].*2 classes'):
        inspect_dataset(bad)
    coco = tmp_path / 'coco'
    (coco / 'annotations').mkdir(parents=True)
    for split, cats in (('train', ['a', 'b']), ('val', ['b', 'a'])):
        (coco / split).mkdir()
        (coco / 'annotations' / f'instances_{split}.json').write_text(json.dumps(dict(
            images=[], annotations=[dict(id=1, image_id=1, category_id=1, bbox=[0, 0, 1, 1])],
            categories=[dict(id=i + 1, name=n) for i, n in enumerate(cats)])))
    with pytest.raises(swap.SwapError, match='in another order'):
        inspect_dataset(coco)


@pytest.fixture(scope='module')
def trained(folders, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """FCOS and DeepLabV3+ written for the folders, trained 2 iterations by tools/train.py's
    code; name -> (config, checkpoint)."""
    from pvt_mm.engine.checkpoint_io import latest_checkpoint
    from pvt_mm.engine.cli import train_main
    work = tmp_path_factory.mktemp('runs')
    fast = ['train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
            'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
            'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False']
    runs = {'fcos': ['train_cfg.max_epochs=1', 'train_cfg.val_interval=2'],  # no validation
            'deeplabv3plus': ['train_cfg.max_iters=2', 'train_cfg.val_interval=4',
                        'default_hooks.checkpoint.interval=2', 'train_dataloader.batch_size=2']}
    out = {}
    for name, opts in runs.items():
        config, _ = {**DET, **SEG}[name]
        path = swap.write_swapped_config(config, 'b0', work / f'{name}_b0.py', checkpoint=None,
                                         data=folders['ade' if name in SEG else 'coco'])
        train_main([str(path), '--work-dir', str(work / name), '--cfg-options', *fast, *opts])
        out[name] = (path, Path(latest_checkpoint(work / name)))
    return out


@pytest.mark.parametrize('name', ['fcos', 'deeplabv3plus'])
def test_written_config_tests_exports_and_infers(name, trained, folders, tmp_path):
    from pvt_mm.deploy.end2end import export_end2end
    from pvt_mm.deploy.infer import infer_onnx
    from pvt_mm.deploy.predictor import load_predictor
    from pvt_mm.engine.cli import test_main
    config, checkpoint = trained[name]
    opts = ['--cfg-options', 'test_dataloader.num_workers=0',
            'test_dataloader.persistent_workers=False']
    if name == 'fcos':
        opts += ['model.test_cfg.nms_pre=50', 'model.test_cfg.max_per_img=20',
                 'model.test_cfg.score_thr=0.0']  # 2 iterations: every score is low
    metrics = test_main([str(config), str(checkpoint), '--work-dir', str(tmp_path), *opts])
    assert ('coco/bbox_mAP' if name == 'fcos' else 'mIoU') in metrics
    onnx = tmp_path / f'{name}.onnx'
    if name == 'fcos':  # mmdet's usual way to name classes: metainfo without a palette
        child = tmp_path / 'classes_only.py'
        child.write_text(f"_base_ = {str(config)!r}\ntest_dataloader = dict(dataset=dict("
                         f"metainfo=dict(_delete_=True, classes={DET_CLASSES!r})))\n")
        config = child
    export_end2end(str(config), str(onnx), str(checkpoint), 17, (64, 64), None)
    predictor = load_predictor(onnx, 'onnxruntime')
    assert len(predictor.palette) == len(predictor.classes) == 5  # was [] without a palette
    images = folders['coco'] / 'val' if name == 'fcos' else \
        folders['ade'] / 'images' / 'validation'
    drawn = infer_onnx(images, onnx, tmp_path / 'infer', score_thr=0.0)
    assert len(drawn) == 2 and all(p.is_file() for p in drawn)


def test_slurm_scripts_run_srun_as_mmdet_does(tmp_path):
    """tools/slurm_{train,test}.sh hand srun mmdet's options and the tool's command line
    (a stand-in srun prints its arguments)."""
    import os
    import subprocess
    srun = tmp_path / 'srun'
    srun.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    srun.chmod(0o755)
    env = {**os.environ, 'PATH': f'{tmp_path}:{os.environ["PATH"]}', 'GPUS': '16',
           'GPUS_PER_NODE': '4', 'CPUS_PER_TASK': '3', 'SRUN_ARGS': '--quotatype=auto -w n1',
           'PYTHON': 'py'}
    for script, args, tail in (
            ('slurm_train.sh', ['cfg.py', 'wd', '--amp'],
             [f'{ROOT}/tools/train.py', 'cfg.py', '--work-dir=wd', '--launcher=slurm', '--amp']),
            ('slurm_test.sh', ['cfg.py', 'ck.pth'],
             [f'{ROOT}/tools/test.py', 'cfg.py', 'ck.pth', '--launcher=slurm'])):
        run = subprocess.run(['bash', str(ROOT / 'tools' / script), 'gpu', 'pvt', *args],
                             env=env, capture_output=True, text=True, check=True)
        assert run.stdout.split('\n')[:-1] == [
            '-p', 'gpu', '--job-name=pvt', '--gres=gpu:4', '--ntasks=16',
            '--ntasks-per-node=4', '--cpus-per-task=3', '--kill-on-bad-exit=1',
            '--quotatype=auto', '-w', 'n1', 'py', '-u', *tail]
        bad = subprocess.run(['bash', str(ROOT / 'tools' / script), 'gpu'], env=env,
                             capture_output=True, text=True)
        assert bad.returncode == 2 and 'usage' in bad.stderr


def test_timm_classifier_names_a_missing_weights_file(tmp_path):
    """timm raises an empty FileNotFoundError for a missing pretrained file."""
    import timm
    missing = tmp_path / 'pvt_small.pth'
    with pytest.raises(FileNotFoundError, match=r"pvt_small\.pth' not found.*download "
                                                r"https://github\.com/whai362/PVT/.*/pvt_small"):
        timm.create_model('pvt_v1_small', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(missing)))


def test_mistyped_stock_name_gets_the_nearest_names(tmp_path):
    """A mistyped mmdet:: name, given to the swap tool or as a config's _base_ read by the
    tools, is answered with the nearest stock names (as local paths are)."""
    from pvt_mm.engine.runtime import read_config
    near = r'did you mean .*mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco\.py'
    with pytest.raises(swap.SwapError, match=near):
        swap.load_stock_config('mmdet::fcos/fcos_r50_fpn_1x_coco.py')
    mine = tmp_path / 'mine.py'
    mine.write_text("_base_ = 'mmdet::fcos/fcos_r50_fpn_1x_coco.py'\n")
    with pytest.raises(FileNotFoundError, match=near):
        read_config(mine)


def test_checkpoint_option_on_a_backbone_without_init_cfg(folders, tmp_path, monkeypatch):
    """The README's advice ``--cfg-options model.backbone.init_cfg.checkpoint=FILE`` on a
    config whose backbone has no init_cfg: a Pretrained init (mmengine: ``KeyError: 'type'``
    after building everything); a missing FILE is named before anything is built."""
    import torch

    from pvt_mm.engine.cli import InputsMissing, parse_train_args, train_config
    from pvt_mm.models.backbones import PVTv2
    monkeypatch.setenv('PVT_MM_DEMO_DATA', str(folders['coco'].parent))
    config = str(ROOT / 'configs/demo/atss_pvtv2-b0_fpn_demo.py')
    weights = tmp_path / 'b0.pth'
    torch.save(PVTv2(arch='b0').state_dict(), weights)
    cfg = train_config(parse_train_args([config, '--work-dir', str(tmp_path), '--cfg-options',
                                         f'model.backbone.init_cfg.checkpoint={weights}']))
    assert cfg.model.backbone.init_cfg == dict(type='Pretrained', checkpoint=str(weights))
    with pytest.raises(InputsMissing, match=r'missing\.pth'):
        train_config(parse_train_args([config, '--work-dir', str(tmp_path), '--cfg-options',
                                       'model.backbone.init_cfg.checkpoint=missing.pth']))


def test_end2end_export_names_a_missing_whole_model_checkpoint(tmp_path, monkeypatch):
    """``tools/export_onnx.py --end2end --checkpoint missing.pth``: one line naming the file as a
    whole-model checkpoint, before any model is built (no hub cache / init_cfg advice, which is
    for backbone weights)."""
    import pvt_mm.deploy.end2end as end2end
    monkeypatch.setattr(end2end, 'build_from_config', lambda *a, **k: pytest.fail('built'))
    missing = tmp_path / 'missing.pth'
    with pytest.raises(FileNotFoundError) as err:
        end2end.build_model('configs/demo/atss_pvtv2-b0_fpn_demo.py', str(missing))
    text = str(err.value)
    assert str(missing) in text and 'whole-model checkpoint' in text
    assert 'hub' not in text and 'init_cfg' not in text
