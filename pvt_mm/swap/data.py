"""Read a user's dataset folder for ``tools/swap_backbone.py --data DIR``: its kind, classes,
annotation files, image folders and typical image size (:func:`inspect_dataset`), and a
palette for its classes (:func:`make_palette`).

Two layouts, as the demo data (``tools/make_demo_data.py``) writes them:

* COCO detection / instances: ``annotations/instances_train*.json``,
  ``annotations/instances_val*.json`` and the image folders named after them (``train2017/``
  for ``instances_train2017.json``) or ``train/`` / ``val/``. Category ids may be any
  integers: mmdet's ``CocoDataset`` numbers the labels in the order the file lists the
  categories (``coco.get_cat_ids(cat_names=classes)``), so the classes are written in that
  order, and both files must list them in the same order.
* mmseg semantic folders: ``images/{training,validation}``, ``annotations/{training,validation}``
  (label maps, ``.png``) and ``classes.txt`` naming label values 0..N-1, one per line; 255 is
  ignored (mmseg's ``ignore_index``).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..visualization.palette import make_palette
from .rules import SwapError

__all__ = ['DatasetInfo', 'inspect_dataset', 'make_palette', 'IGNORE_INDEX']

IGNORE_INDEX = 255  # mmseg's ignore_index: label value left out of loss and metrics
SEG_SPLITS = {'train': 'training', 'val': 'validation'}
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
LABEL_SAMPLE = 64  # label maps read per split to check their values
SIZE_SAMPLE = 16   # images read (headers) per split for the typical size of a seg folder
@dataclass
class DatasetInfo:
    """What the config needs from the dataset folder (paths relative to ``root``)."""

    kind: str                       # 'coco' or 'seg'
    root: str                       # the folder as given, ending in '/'
    classes: tuple[str, ...]
    ann_file: dict[str, str] = field(default_factory=dict)    # coco: split -> json
    img_prefix: dict[str, str] = field(default_factory=dict)  # split -> image folder
    seg_prefix: dict[str, str] = field(default_factory=dict)  # seg: split -> label folder
    img_suffix: str = '.jpg'
    seg_map_suffix: str = '.png'
    has_masks: bool = False         # coco: annotations carry 'segmentation'
    short_side: int = 0             # median shorter image side (px) of the train split
    notes: list[str] = field(default_factory=list)

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return make_palette(self.classes)


def _root(path: str | os.PathLike) -> str:
    text = str(path).replace('\\', '/')
    return text if text.endswith('/') else text + '/'


def inspect_dataset(path: str | os.PathLike, classes: Sequence[str] | None = None
                    ) -> DatasetInfo:
    """Read the dataset folder ``path``; ``classes`` (optional) picks and names the classes
    instead of the annotation file / ``classes.txt``. Raises :class:`SwapError` naming what
    is missing or inconsistent."""
    folder = Path(path)
    if not folder.is_dir():
        raise SwapError(f'--data {path}: no such folder')
    if sorted((folder / 'annotations').glob('instances_train*.json')):
        return _inspect_coco(folder, _root(path), classes)
    if (folder / 'images').is_dir():
        return _inspect_seg(folder, _root(path), classes)
    raise SwapError(f'--data {path}: neither a COCO folder (annotations/instances_train*.json)'
                    ' nor an mmseg folder (images/training, annotations/training, '
                    'classes.txt)')


def _one(folder: Path, pattern: str) -> Path:
    found = sorted((folder / 'annotations').glob(pattern))
    if len(found) != 1:
        what = 'no file' if not found else f'{len(found)} files ({[f.name for f in found]})'
        raise SwapError(f'{folder}/annotations: {what} matches {pattern}; keep exactly one')
    return found[0]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SwapError(f'{path} is not a readable COCO json file: {e}') from e
    for key in ('images', 'annotations', 'categories'):
        if not isinstance(data.get(key), list):
            raise SwapError(f'{path} has no {key!r} list: not a COCO instances file')
    return data


def _category_names(data: dict, path: Path) -> list[str]:
    names = [str(c.get('name')) for c in data['categories']]
    dup = sorted(n for n, k in Counter(names).items() if k > 1)
    if dup:
        raise SwapError(f'{path}: category names {dup} appear more than once (mmdet maps '
                        'classes to category ids by name)')
    return names


def _image_folder(folder: Path, split: str, ann: Path) -> str:
    suffix = ann.stem[len(f'instances_{split}'):]  # '2017' of instances_train2017
    for name in dict.fromkeys((f'{split}{suffix}', split)):
        if (folder / name).is_dir():
            return name + '/'
    raise SwapError(f'{folder}: no image folder {split}{suffix}/ or {split}/ beside '
                    f'annotations/{ann.name}')


def _inspect_coco(folder: Path, root: str, wanted: Sequence[str] | None) -> DatasetInfo:
    anns = {s: _one(folder, f'instances_{s}*.json') for s in ('train', 'val')}
    data = {s: _read_json(p) for s, p in anns.items()}
    names = {s: _category_names(d, anns[s]) for s, d in data.items()}
    notes = []
    if wanted:
        unknown = [c for c in wanted if c not in names['train']]
        if unknown:
            raise SwapError(f'--classes {unknown} are not categories of {anns["train"]} '
                            f'({names["train"]})')
        classes = [n for n in names['train'] if n in wanted]  # mmdet numbers in file order
        if classes != list(wanted):
            notes.append(f'classes in the order {anns["train"].name} lists them (mmdet '
                         f'numbers the labels so): {classes}')
    else:
        classes = names['train']
    if not classes:
        raise SwapError(f'{anns["train"]} has no categories')
    val_order = [n for n in names['val'] if n in classes]
    if val_order != classes:
        missing = [c for c in classes if c not in names['val']]
        raise SwapError(
            f'{anns["val"]} lists the categories {names["val"]}, {anns["train"]} '
            f'{names["train"]}: ' + (f'{missing} are missing from the val file' if missing
                                     else 'in another order') +
            '; mmdet numbers the labels in each file\'s order, so both must list the classes '
            'in the same order')
    used = {c['id'] for c in data['train']['categories'] if c.get('name') in classes}
    train_anns = [a for a in data['train']['annotations'] if a.get('category_id') in used]
    if not train_anns:
        raise SwapError(f'{anns["train"]} has no annotation of the classes {classes}')
    sides = sorted(min(int(i.get('width') or 0), int(i.get('height') or 0))
                   for i in data['train']['images'])
    return DatasetInfo(
        kind='coco', root=root, classes=tuple(classes),
        ann_file={s: f'annotations/{p.name}' for s, p in anns.items()},
        img_prefix={s: _image_folder(folder, s, p) for s, p in anns.items()},
        has_masks=all(a.get('segmentation') for a in train_anns),
        short_side=sides[len(sides) // 2] if sides else 0, notes=notes)


def _files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    return sorted(p for p in folder.rglob('*') if p.suffix.lower() in suffixes)


def _read_classes(folder: Path, wanted: Sequence[str] | None) -> tuple[str, ...]:
    if wanted:
        return tuple(wanted)
    path = folder / 'classes.txt'
    if not path.is_file():
        raise SwapError(f'{folder}: no classes.txt (one class name per line, line k naming '
                        'label value k) and no --classes given')
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise SwapError(f'{path} names no class')
    if len(names) >= IGNORE_INDEX:
        raise SwapError(f'{path} names {len(names)} classes; label value {IGNORE_INDEX} is '
                        'the ignored one, so at most 255 classes fit')
    return names


def _check_labels(labels: list[Path], n: int, where: Path) -> None:
    """The values of a sample of label maps must be classes (0..n-1) or 255."""
    import numpy as np
    from PIL import Image
    step = max(1, len(labels) // LABEL_SAMPLE)
    for path in labels[::step][:LABEL_SAMPLE]:
        with Image.open(path) as im:
            if im.mode not in ('L', 'P', 'I', 'I;16'):
                raise SwapError(f'{path} is a {im.mode} image; label maps are single-channel '
                                '(one class value per pixel)')
            values = np.unique(np.asarray(im))
        bad = [int(v) for v in values if v >= n and v != IGNORE_INDEX]
        if bad:
            raise SwapError(f'{path} holds label values {bad}, but {n} classes are named '
                            f'(values 0..{n - 1}, {IGNORE_INDEX} ignored); fix classes.txt '
                            f'or the label maps under {where}')


def _inspect_seg(folder: Path, root: str, wanted: Sequence[str] | None) -> DatasetInfo:
    from PIL import Image
    classes = _read_classes(folder, wanted)
    info = DatasetInfo(kind='seg', root=root, classes=classes)
    suffixes: Counter = Counter()
    for split, name in SEG_SPLITS.items():
        images, labels = folder / 'images' / name, folder / 'annotations' / name
        for d in (images, labels):
            if not d.is_dir():
                raise SwapError(f'{folder}: no folder {d.relative_to(folder)}/')
        image_files = _files(images, IMAGE_SUFFIXES)
        label_files = _files(labels, ('.png',))
        if not image_files or not label_files:
            empty, what = (images, 'images') if not image_files else (labels, '.png label maps')
            raise SwapError(f'{empty} holds no {what}')
        stems = {p.relative_to(images).with_suffix('').as_posix() for p in image_files}
        unlabelled = sorted(stems - {p.relative_to(labels).with_suffix('').as_posix()
                                     for p in label_files})
        if unlabelled:
            raise SwapError(f'{len(unlabelled)} images under {images} have no label map '
                            f'under {labels} (first: {unlabelled[0]})')
        suffixes.update(p.suffix for p in image_files)
        _check_labels(label_files, len(classes), labels)
        info.img_prefix[split] = f'images/{name}'
        info.seg_prefix[split] = f'annotations/{name}'
        if split == 'train':
            step = max(1, len(image_files) // SIZE_SAMPLE)
            sides = []
            for p in image_files[::step][:SIZE_SAMPLE]:
                with Image.open(p) as im:
                    sides.append(min(im.size))
            info.short_side = sorted(sides)[len(sides) // 2]
    if len(suffixes) > 1:
        raise SwapError(f'{folder}/images mixes image types {sorted(suffixes)}; mmseg reads '
                        'one img_suffix')
    info.img_suffix = next(iter(suffixes))
    return info
