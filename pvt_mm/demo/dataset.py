"""Write the demo dataset: COCO-format instances and an ADE20K-style semantic folder.

Layout under ``root`` (default ``data/demo``)::

    coco/{train,val}/*.jpg                  coco/annotations/instances_{train,val}.json
    ade/images/{training,validation}/*.jpg  ade/annotations/{training,validation}/*.png
    meta.json                               (the settings; a changed setting regenerates)

Instance masks are compressed RLE (rings have holes, which polygons cannot express).
Semantic labels: 0 = background, ``k + 1`` = class ``k`` of :data:`CLASSES`.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
from mmengine.utils import ProgressBar

from .scene import CLASSES, Scene, SceneSpec, draw_scene

SPLITS = {'train': 'training', 'val': 'validation'}  # COCO split -> ADE20K split name
VAL_SEED_OFFSET = 1_000_000  # val scenes use seeds far from the train ones
JPEG_QUALITY = 95
FORMAT_VERSION = 1           # bump when the drawing code changes, to regenerate old data
SEG_CLASSES: tuple[str, ...] = ('background',) + CLASSES


@dataclass
class DemoDataSpec:
    """What to generate: images per split, the base seed and how scenes are drawn."""
    num_train: int = 600
    num_val: int = 100
    seed: int = 0
    scene: SceneSpec = field(default_factory=SceneSpec)


def _instance_annotations(scene: Scene, image_id: int, next_id: int) -> list[dict]:
    anns = []
    for label, mask in zip(scene.labels, scene.masks):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        rle['counts'] = rle['counts'].decode('ascii')
        anns.append(dict(id=next_id + len(anns), image_id=image_id, category_id=label + 1,
                         bbox=[x, y, w, h], area=float(mask.sum()), segmentation=rle,
                         iscrowd=0))
    return anns


def _write_split(root: Path, split: str, seeds: list[int], spec: SceneSpec,
                 bar: ProgressBar) -> None:
    coco_dir = root / 'coco' / split
    ade_img = root / 'ade' / 'images' / SPLITS[split]
    ade_ann = root / 'ade' / 'annotations' / SPLITS[split]
    for d in (coco_dir, ade_img, ade_ann):
        d.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index, seed in enumerate(seeds):
        scene = draw_scene(seed, spec)
        name = f'{split}_{index:05d}'
        ok = cv2.imwrite(str(coco_dir / f'{name}.jpg'), scene.image,
                         [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise OSError(f'could not write {coco_dir / name}.jpg')
        shutil.copyfile(coco_dir / f'{name}.jpg', ade_img / f'{name}.jpg')
        cv2.imwrite(str(ade_ann / f'{name}.png'), scene.semantic)
        images.append(dict(id=index, file_name=f'{name}.jpg', width=spec.size,
                           height=spec.size))
        annotations += _instance_annotations(scene, index, len(annotations))
        bar.update()
    categories = [dict(id=i + 1, name=n, supercategory='shape') for i, n in enumerate(CLASSES)]
    ann_dir = root / 'coco' / 'annotations'
    ann_dir.mkdir(parents=True, exist_ok=True)
    with open(ann_dir / f'instances_{split}.json', 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)


def _meta(spec: DemoDataSpec) -> dict:
    return dict(format_version=FORMAT_VERSION, **asdict(spec))


def is_up_to_date(root: str | Path, spec: DemoDataSpec = DemoDataSpec()) -> bool:
    """Whether ``root`` holds a complete dataset generated with ``spec``."""
    meta = Path(root) / 'meta.json'
    return meta.is_file() and json.loads(meta.read_text()) == _meta(spec)


def make_demo_data(root: str | Path = 'data/demo', spec: DemoDataSpec = DemoDataSpec(),
                   force: bool = False) -> Path:
    """Generate the demo dataset under ``root`` (skipped when already there with the same
    settings, unless ``force``). Deterministic: the same spec gives the same files."""
    root = Path(root)
    if not force and is_up_to_date(root, spec):
        print(f'demo data already in {root} (same settings), not regenerated')
        return root
    for sub in ('coco', 'ade', 'meta.json'):  # never leave a mix of old and new files
        path = root / sub
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    print(f'generating {spec.num_train} train + {spec.num_val} val images in {root}')
    bar = ProgressBar(spec.num_train + spec.num_val)
    _write_split(root, 'train', [spec.seed + i for i in range(spec.num_train)], spec.scene,
                 bar)
    _write_split(root, 'val',
                 [spec.seed + VAL_SEED_OFFSET + i for i in range(spec.num_val)], spec.scene,
                 bar)
    print()
    (root / 'meta.json').write_text(json.dumps(_meta(spec), indent=1))
    return root
