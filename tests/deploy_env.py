"""A real Python environment without PyTorch for the deployed predictor's tests: a fresh venv
(``python -m venv --without-pip``, no system site-packages) whose site-packages holds links to
exactly the installed files of numpy, OpenCV, one runtime and what they require (resolved
from the installed distributions' metadata, nothing downloaded), plus ``pvt_mm_runtime``.
torch, mmengine, mmcv, mmdet, mmseg and onnx are not installed there at all."""
from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
OPENCV = ('opencv-python-headless', 'opencv-python', 'opencv-contrib-python')
ABSENT = ('torch', 'mmengine', 'mmcv', 'mmdet', 'mmseg', 'onnx', 'pvt_mm')


def _closure(names: list[str]) -> list[metadata.Distribution]:
    """The installed distributions ``names`` and, recursively, their (non-extra) requirements."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        key = dist.metadata['Name'].lower().replace('_', '-')
        if key in seen:
            continue
        seen[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({'extra': ''}):
                todo.append(req.name)
    return list(seen.values())


def make_env(folder: Path, runtime: str) -> Path:
    """A venv in ``folder`` with numpy, OpenCV, ``runtime`` and pvt_mm_runtime; its python."""
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(folder)], check=True)
    python = folder / 'bin' / 'python'
    site = Path(subprocess.run([str(python), '-c', 'import sysconfig; print(sysconfig.get_path('
                                '"purelib"))'], check=True, capture_output=True,
                               text=True).stdout.strip())
    opencv = next(n for n in OPENCV if _installed(n))
    for dist in _closure(['numpy', opencv, runtime]):
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith('..')}
        for top in tops:
            src = Path(dist.locate_file(top))
            if src.exists() and not (site / top).exists():
                (site / top).symlink_to(src)
    (site / 'pvt_mm_runtime').symlink_to(ROOT / 'pvt_mm_runtime')
    return python


def clean_env() -> dict[str, str]:
    """This process's environment without PYTHON* variables (no PYTHONPATH into the repo)."""
    return {k: v for k, v in os.environ.items() if not k.startswith('PYTHON')}


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


# Run in that environment: import time, the predictor on an image, what got imported, peak RSS.
PREDICT = r'''
import json, sys, time
start = time.perf_counter()
from pvt_mm_runtime import load_predictor
import_s = time.perf_counter() - start
import numpy as np
image = np.load(sys.argv[3])
predictor = load_predictor(sys.argv[1], sys.argv[2])
result = predictor(image)
np.savez(sys.argv[4], bboxes=result.bboxes, scores=result.scores, labels=result.labels)
absent = sys.argv[5].split(',')


def peak_rss_mb():  # this process image's high-water mark (ru_maxrss would count the parent's
    for line in open('/proc/self/status'):  # memory from before exec)
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024



print(json.dumps(dict(
    import_s=import_s, peak_rss_mb=peak_rss_mb(),
    loaded=sorted(m for m in absent if m in sys.modules),
    findable=[m for m in absent if __import__('importlib.util').util.find_spec(m) is not None],
    runtime_module=predictor.model.runtime)))
'''
