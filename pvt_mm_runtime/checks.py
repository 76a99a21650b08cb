"""Input checks of the deployed-model tools, torch-free (stdlib, numpy; Pillow's header reader
when installed): a bad .onnx, image or output folder is one ``ValueError`` line naming it, found
before any inference or large allocation.

- :func:`check_metadata`: the ``pvt_mm.deploy`` metadata's fields and types (a task the
  predictors know, class names, palette, a bounded positive ``test_resize``);
- :func:`check_model_file`: operator domains the runtimes run as exported (no custom-op
  domains) and external tensor data inside the model's folder, read from the file's protobuf
  fields without parsing the graph;
- :func:`check_image_file`: an image's size from its header (never decoded first), at most
  :data:`MAX_IMAGE_PIXELS`;
- :func:`check_out_dir`: an output folder that is (or can be made) a writable directory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .metadata import _BYTES, _fields, model_fields, read_metadata

__all__ = ['check_metadata', 'checked_metadata', 'check_model_file', 'check_image_file', 'check_out_dir',
           'runtime_error', 'MAX_IMAGE_PIXELS', 'MAX_RESIZE']

TASKS = ('det', 'seg')
MAX_RESIZE = 8192  # a test resize side (px); the configs use 512..1333
MAX_IMAGE_PIXELS = 1 << 26  # 8192 x 8192 (a 50 MP photo fits; decoding needs 3 bytes / px)
# operator domains pvt_mm's exports use (ONNX's own; ORT's contrib ops for its fused graphs)
DOMAINS = ('', 'ai.onnx', 'ai.onnx.ml', 'com.microsoft')
_GRAPH = 7  # ModelProto.graph
_NODE, _INITIALIZER = 1, 5  # GraphProto.node / .initializer
_NODE_DOMAIN, _EXTERNAL = 7, 13  # NodeProto.domain, TensorProto.external_data


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 50 else text[:47] + '...'


def check_metadata(meta: Any, path: str | Path) -> dict:
    """``meta`` (the parsed ``pvt_mm.deploy`` JSON) if its fields are usable, else ValueError
    naming ``path`` and the field."""
    def bad(what: str) -> ValueError:
        return ValueError(f'{path}: its pvt_mm.deploy metadata {what} (not written by '
                          'tools/export_onnx.py --end2end, or edited)')
    if not isinstance(meta, dict):
        raise bad(f'is a {type(meta).__name__}, not a JSON object')
    if meta.get('task') not in TASKS:
        raise bad(f'has task {_short(meta.get("task"))}; expected one of {TASKS}')
    classes = meta.get('classes')
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise bad(f'has classes {_short(classes)}; expected a list of names')
    palette = meta.get('palette')
    if not (isinstance(palette, list) and all(
            isinstance(c, list) and len(c) == 3 and all(type(v) is int and 0 <= v <= 255
                                                        for v in c) for c in palette)):
        raise bad(f'has palette {_short(palette)}; expected [[r, g, b], ...] in 0..255')
    resize = meta.get('test_resize')
    if resize is not None:
        scale = resize.get('scale') if isinstance(resize, dict) else None
        if not (isinstance(scale, list) and len(scale) == 2
                and all(type(v) is int and 1 <= v <= MAX_RESIZE for v in scale)
                and type(resize.get('keep_ratio')) is bool):
            raise bad(f'has test_resize {_short(resize)}; expected {{"scale": [w, h] in 1..'
                      f'{MAX_RESIZE}, "keep_ratio": true|false}}')
    thr = meta.get('mask_thr_binary')
    if thr is not None and not (type(thr) in (int, float) and 0 <= thr <= 1):
        raise bad(f'has mask_thr_binary {_short(thr)}; expected a number in [0, 1]')
    return meta


def _strings(buf: memoryview, start: int, end: int, number: int) -> list[str]:
    """The string fields ``number`` of the message in ``buf[start:end]``."""
    return [bytes(buf[a:b]).decode() for n, w, a, b in _fields(buf, start, end)
            if n == number and w == _BYTES]


def check_model_file(path: str | Path) -> None:
    """Refuse a model whose graph runs operators of a domain outside :data:`DOMAINS` (custom
    ops: one runtime fails, another may prune them and run something else) or whose tensors'
    external data lies outside its folder; ValueError naming the file. Read from the file's
    protobuf fields (graph nodes and initializers, never their tensor data)."""
    path = Path(path)
    with model_fields(path) as (buf, size):
        for number, wire, a, b in _fields(buf, 0, size):
            if number == _GRAPH and wire == _BYTES:
                _check_graph(buf, a, b, path)


def _check_graph(buf: memoryview, start: int, end: int, path: Path) -> None:
    folder = path.resolve().parent
    for number, wire, a, b in _fields(buf, start, end):
        if wire != _BYTES:
            continue
        if number == _NODE:
            domain = ''.join(_strings(buf, a, b, _NODE_DOMAIN))
            if domain not in DOMAINS:
                raise ValueError(f'{path} uses operators of the custom domain {domain!r}, '
                                 'which pvt_mm exports never contain')
        elif number == _INITIALIZER:
            for n, w, c, d in _fields(buf, a, b):
                if n != _EXTERNAL or w != _BYTES or _strings(buf, c, d, 1) != ['location']:
                    continue
                location = ''.join(_strings(buf, c, d, 2))
                target = (folder / location).resolve()
                if os.path.isabs(location) or folder not in target.parents:
                    raise ValueError(f'{path} keeps tensor data in {location!r}, outside its '
                                     f'folder {folder}; refused')


def check_image_file(path: str | Path) -> tuple[int, int]:
    """(width, height) from the image's header; ValueError naming ``path`` when it is empty,
    not an image, or larger than :data:`MAX_IMAGE_PIXELS` (checked before any decoding)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise ValueError(f'{path} is not a readable image (empty or not a file)')
    try:
        from PIL import Image
    except ImportError:  # no header reader: OpenCV's own limit and error apply
        return 0, 0
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
    except Image.DecompressionBombError as e:  # Pillow's own, higher limit
        raise ValueError(f'{path} is too large an image to decode (its header: '
                         f'{str(e).split(" exceeds")[0].lower()}; at most {MAX_IMAGE_PIXELS} '
                         'pixels, 8192 x 8192)') from None
    except Exception as e:  # noqa: BLE001  whatever the header reader says: not an image
        raise ValueError(f'{path} is not a readable image ({type(e).__name__}: '
                         f'{str(e)[:80]})') from None
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f'{path} is a {width}x{height} image: more than {MAX_IMAGE_PIXELS} '
                         'pixels (8192 x 8192); downscale it first')
    if width < 1 or height < 1:
        raise ValueError(f'{path} is an image of size {width}x{height}')
    return width, height


def check_out_dir(path: str | Path) -> Path:
    """``path`` as a writable output folder (created if missing), before any work is done."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f'--out-dir {path} exists and is not a folder')
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f'--out-dir {path} cannot be created: {e.strerror or e}') from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f'--out-dir {path} is not writable')
    return path


def runtime_error(path: str | Path, runtime: str, error: Exception) -> ValueError:
    """A runtime's refusal to load ``path`` as one line."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return ValueError(f'{path}: {runtime} cannot load this model ({type(error).__name__}: '
                      f'{first[:200]})')


def checked_metadata(path: str | Path) -> dict:
    """``path``'s ``pvt_mm.deploy`` metadata, read (:func:`read_metadata`) and checked
    (:func:`check_metadata`); every problem is one ValueError naming the file."""
    try:
        meta = read_metadata(path)
    except RecursionError:
        raise ValueError(f'{path}: its pvt_mm.deploy metadata is nested too deeply') from None
    return check_metadata(meta, path)
