"""The demo dataset generator: deterministic, consistent COCO / ADE20K-style annotations,
non-trivial scenes, and the demo configs agree with its class list."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from mmengine.config import Config
from pycocotools.coco import COCO

from pvt_mm.demo import (CLASSES, SEG_CLASSES, DemoDataSpec, SceneSpec, draw_scene,
                         is_up_to_date, make_demo_data)

CONFIGS = Path(__file__).resolve().parents[1] / 'configs' / 'demo'
SPEC = DemoDataSpec(num_train=12, num_val=6, seed=3)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp('demo'), SPEC)


def test_scene_is_deterministic_and_seed_dependent():
    a, b, c = draw_scene(5), draw_scene(5), draw_scene(6)
    assert np.array_equal(a.image, b.image) and a.labels == b.labels
    assert not np.array_equal(a.image, c.image)


def test_scenes_are_not_trivial():
    """Several classes per dataset, overlapping objects, varied sizes, textured background."""
    scenes = [draw_scene(i) for i in range(40)]
    labels = Counter(label for s in scenes for label in s.labels)
    assert set(labels) == set(range(len(CLASSES)))
    assert all(2 <= len(s.labels) <= SceneSpec().max_objects for s in scenes[:10])
    sizes = [np.sqrt(m.sum()) for s in scenes for m in s.masks]
    assert max(sizes) > 2.5 * min(sizes)
    occluded = sum(1 for s in scenes if _has_occlusion(s))
    assert occluded >= 5, 'overlapping objects should be common'
    background = scenes[0].image[scenes[0].semantic == 0].astype(float)
    assert background.std(axis=0).min() > 10, 'background should be textured, not flat'


def _has_occlusion(scene) -> bool:
    """Two objects whose boxes overlap."""
    boxes = [cv2.boundingRect(m.astype(np.uint8)) for m in scene.masks]
    for i, (x, y, w, h) in enumerate(boxes):
        for x2, y2, w2, h2 in boxes[i + 1:]:
            if x < x2 + w2 and x2 < x + w and y < y2 + h2 and y2 < y + h:
                return True
    return False


def test_coco_annotations_match_masks_and_semantic_labels(data_root: Path):
    coco = COCO(str(data_root / 'coco/annotations/instances_val.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert len(coco.getImgIds()) == SPEC.num_val
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        stem = Path(info['file_name']).stem
        image = cv2.imread(str(data_root / 'coco/val' / info['file_name']))
        assert image.shape == (info['height'], info['width'], 3)
        semantic = cv2.imread(str(data_root / f'ade/annotations/validation/{stem}.png'),
                              cv2.IMREAD_UNCHANGED)
        ade_image = cv2.imread(str(data_root / f'ade/images/validation/{stem}.jpg'))
        assert np.array_equal(image, ade_image)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        assert anns, 'every image has objects'
        painted = np.zeros_like(semantic)
        for ann in anns:
            mask = coco.annToMask(ann).astype(bool)
            assert mask.sum() == ann['area'] > 0
            x, y, w, h = ann['bbox']
            ys, xs = np.nonzero(mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
            assert not painted[mask].any(), 'visible masks do not overlap'
            painted[mask] = ann['category_id']
        # instance masks and the semantic map describe the same pixels
        assert np.array_equal(painted, semantic)


def test_generation_is_deterministic_and_skipped_when_up_to_date(data_root: Path, tmp_path):
    assert is_up_to_date(data_root, SPEC)
    assert not is_up_to_date(data_root, DemoDataSpec(num_train=13, num_val=6, seed=3))
    before = (data_root / 'coco/train/train_00000.jpg').stat().st_mtime_ns
    make_demo_data(data_root, SPEC)
    assert (data_root / 'coco/train/train_00000.jpg').stat().st_mtime_ns == before
    again = make_demo_data(tmp_path / 'again', SPEC)
    for rel in ('coco/annotations/instances_train.json', 'coco/train/train_00003.jpg',
                'ade/annotations/training/train_00003.png'):
        assert (again / rel).read_bytes() == (data_root / rel).read_bytes(), rel
    train = json.loads((data_root / 'coco/annotations/instances_train.json').read_text())
    val = json.loads((data_root / 'coco/annotations/instances_val.json').read_text())
    seg = train['annotations'][0]['segmentation']  # compressed RLE, counts as text
    assert mask_utils.area(dict(seg, counts=seg['counts'].encode())) == \
        train['annotations'][0]['area']
    assert len(train['images']) == SPEC.num_train and len(val['images']) == SPEC.num_val


def test_changed_settings_regenerate(tmp_path):
    small = DemoDataSpec(num_train=3, num_val=2, seed=1)
    make_demo_data(tmp_path, small)
    make_demo_data(tmp_path, DemoDataSpec(num_train=2, num_val=2, seed=1))
    assert sorted(p.name for p in (tmp_path / 'coco/train').iterdir()) == [
        'train_00000.jpg', 'train_00001.jpg']


def test_scaled_spec_scales_objects():
    spec = SceneSpec.scaled(256)
    assert spec.size == 256 and spec.min_scale == 2 * SceneSpec().min_scale
    assert draw_scene(0, spec).image.shape == (256, 256, 3)


@pytest.mark.parametrize('name,classes', [('_base_/demo_coco_instance.py', CLASSES),
                                          ('_base_/demo_ade_semantic.py', SEG_CLASSES)])
def test_demo_configs_use_the_generator_classes(name: str, classes: tuple[str, ...]):
    cfg = Config.fromfile(str(CONFIGS / name))
    assert tuple(cfg.metainfo['classes']) == classes
    assert len(cfg.metainfo['palette']) == len(classes)
