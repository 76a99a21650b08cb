"""Coverage of :func:`pvt_mm.swap.swap_config` over the stock configs of mmdet and mmseg.

For each config (the first ResNet-50 config of every method folder of the installed packages'
``.mim/configs``, or all of them): the stock config is built with random weights and run
(``model.test_step``) on one small synthetic image, then swapped, built and run the same way.
Nothing is downloaded: sockets refuse to connect while a config is checked, and configs that
build a teacher or a text model from weights at build time are listed, not built. Result:
one :class:`Row` per config, and a markdown table (``docs/swap_coverage.md``).
"""
from __future__ import annotations

import contextlib
import copy
import gc
import os
import platform
import re
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .core import SwapError, load_stock_config, resolve_arch, resolve_config_path, swap_config

SCOPES = ('mmdet', 'mmseg')
TRACK_PREPROCESSORS = ('TrackDataPreprocessor',)
# test_cfg counts capped in the sweep (speed only: the swap never touches test_cfg)
CAPPED_KEYS = ('max_per_img', 'nms_pre', 'max_num', 'nms_post')
TEST_CAP = 100
# errors that may go away on a larger image (then the stock config is tried once more)
SIZE_ERRORS = re.compile(r'out of range|too small|smaller than|size', re.IGNORECASE)
# keys whose presence means the model loads weights or a text model while it is built
FETCHING_KEYS = {'teacher_ckpt': 'builds its distillation teacher from a checkpoint',
                 'teacher_config': 'builds its distillation teacher from another config',
                 'language_model': 'loads a pretrained text model (e.g. bert-base-uncased)'}


class NetworkBlocked(RuntimeError):
    """Raised on any connection attempt during the sweep."""


@dataclass
class Row:
    """One config: ``stock`` is 'works' / 'fails' / 'not built'; ``swap`` 'swapped' /
    'refused' / 'fails' / '' (not tried); ``reason`` explains the last non-success."""
    scope: str
    folder: str
    config: str
    stock: str = ''
    swap: str = ''
    reason: str = ''
    seconds: float = 0.
    image_size: int = 0


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Make every socket connection (torch.hub, mmengine's load_from_http, HF) raise."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise NetworkBlocked(f'network access refused during the sweep: {args[1:] or args}')
    saved = socket.socket.connect, socket.create_connection
    env = {k: os.environ.get(k) for k in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE')}
    socket.socket.connect, socket.create_connection = refuse, refuse
    os.environ.update(HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1')
    try:
        yield
    finally:
        socket.socket.connect, socket.create_connection = saved
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def configs_root(scope: str) -> Path:
    """``site-packages/<scope>/.mim/configs`` of the installed package."""
    return resolve_config_path(f'{scope}::_base_/default_runtime.py').parents[1]


def find_configs(scope: str, all_configs: bool = False,
                 only: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``(folder, 'scope::folder/name.py')``: the first (sorted) config whose name has
    ``r50`` in each method folder, or all of them."""
    if scope not in SCOPES:
        raise ValueError(f'scope must be one of {SCOPES}, got {scope!r}')
    root = configs_root(scope)
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != '_base_'):
        if only and folder.name not in only:
            continue
        names = sorted(p.name for p in folder.glob('*.py') if 'r50' in p.name)
        for name in names if all_configs else names[:1]:
            found.append((folder.name, f'{scope}::{folder.name}/{name}'))
    return found


def fetches_at_build(model: Any) -> str | None:
    """Why building ``model`` would load weights/configs from elsewhere (None: it does not)."""
    if isinstance(model, Mapping):
        for key, why in FETCHING_KEYS.items():
            if model.get(key):
                return f'{why} ({key})'
        values = model.values()
    elif isinstance(model, (list, tuple)):
        values = model
    else:
        return None
    for v in values:
        why = fetches_at_build(v)
        if why:
            return why
    return None


def _metainfo(h: int, w: int, **extra: Any) -> dict:
    return dict(img_id=0, img_path='', img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                scale_factor=(1., 1.), flip=False, flip_direction=None, **extra)


def _image(h: int, w: int, frames: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    shape = (frames, 3, h, w) if frames else (3, h, w)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


def make_batch(cfg: Any, scope: str, size: int) -> dict:
    """One synthetic image packed as the config's model expects it in ``test_step``."""
    model = cfg.model
    preprocessor = (model.get('data_preprocessor') or {}).get('type', '')
    if scope == 'mmseg':
        from mmseg.structures import SegDataSample
        return dict(inputs=[_image(size, size)],
                    data_samples=[SegDataSample(metainfo=_metainfo(size, size))])
    from mmdet.structures import DetDataSample
    if model.get('type') == 'BaseReID':  # person crops, 2:1
        from mmdet.structures import ReIDDataSample
        h, w = 2 * size, size
        return dict(inputs=[_image(h, w)], data_samples=[ReIDDataSample(
            metainfo=_metainfo(h, w))])
    if preprocessor.split('.')[-1] in TRACK_PREPROCESSORS:  # a video of one frame
        from mmdet.structures import TrackDataSample
        frame = DetDataSample(metainfo=_metainfo(size, size, frame_id=0, video_id=0,
                                                 video_length=1))
        sample = TrackDataSample(video_data_samples=[frame], metainfo=dict(video_id=0))
        return dict(inputs=[_image(size, size, frames=1)], data_samples=[sample])
    sample = DetDataSample(metainfo=_metainfo(size, size))
    if 'roi_head' in model and not model.get('rpn_head'):
        # Fast R-CNN style detectors (no RPN) take precomputed proposals
        from mmengine.structures import InstanceData
        q = size / 4
        sample.proposals = InstanceData(bboxes=torch.tensor([[q, q, 3 * q, 3 * q],
                                                             [0., 0., 2 * q, 2 * q]]),
                                        scores=torch.tensor([0.9, 0.8]))
    return dict(inputs=[_image(size, size)], data_samples=[sample])


def cap_test_cfg(value: Any, cap: int = TEST_CAP) -> Any:
    """A copy of a model config whose test-time proposal/detection counts are at most
    ``cap`` (random weights propose boxes everywhere; the count does not matter here)."""
    if isinstance(value, Mapping):
        return {k: min(v, cap) if k in CAPPED_KEYS and isinstance(v, int) and v > 0
                else cap_test_cfg(v, cap) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cap_test_cfg(v, cap) for v in value)
    return value


def without_pretrained(value: Any) -> Any:
    """A copy of a model config without weights to load: ``init_cfg`` of type
    ``Pretrained`` and ``pretrained`` set to None (the rest of ``init_cfg`` stays)."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if k == 'pretrained' and isinstance(v, str):
                v = None
            elif k == 'init_cfg' and isinstance(v, Mapping) and v.get('type') == 'Pretrained':
                v = None
            elif k == 'init_cfg' and isinstance(v, (list, tuple)):
                v = [c for c in v if not (isinstance(c, Mapping) and
                                          c.get('type') == 'Pretrained')] or None
            out[k] = without_pretrained(v)
        return out
    if isinstance(value, (list, tuple)):
        return type(value)(without_pretrained(v) for v in value)
    return value


def build_and_run(cfg: Any, image_size: int) -> None:
    """Build ``cfg.model`` with its scope's registry, initialise it with its own random
    initialisers (:func:`without_pretrained`: nothing is loaded) and run ``test_step`` on one
    synthetic image (test-time proposals capped by :func:`cap_test_cfg`); raises whatever
    goes wrong."""
    from mmengine.registry import init_default_scope
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f'default_scope {scope!r} is not one of {SCOPES}')
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    model_cfg = copy.deepcopy(cfg.model.to_dict())  # some heads edit their config dicts
    for key in ('test_cfg',):
        if key in model_cfg:
            model_cfg[key] = cap_test_cfg(model_cfg[key])
    if isinstance(model_cfg.get('detector'), Mapping) and 'test_cfg' in model_cfg['detector']:
        model_cfg['detector']['test_cfg'] = cap_test_cfg(model_cfg['detector']['test_cfg'])
    from mmengine.config import ConfigDict
    model = MODELS.build(ConfigDict(without_pretrained(model_cfg)))  # (test_cfg.rpn etc.)
    model.init_weights()  # the config's own initialisers; nothing is loaded
    model.eval()
    with torch.no_grad():
        out = model.test_step(make_batch(cfg, scope, image_size))
    if not out:
        raise RuntimeError('test_step returned no result')


def _reason(e: BaseException) -> str:
    text = f'{type(e).__name__}: {e}'.strip().splitlines()
    line = next((t for t in text if t.strip()), type(e).__name__)
    return ' '.join(line.split())[:200]


def check_config(config: str, arch: str = 'b0', image_size: int = 128,
                 retry_size: int | None = 256) -> Row:
    """The stock config, then its swap: build and run each (see the module docstring); a
    stock config that fails at ``image_size`` with an error about sizes is tried once more
    at ``retry_size``."""
    scope, rest = config.split('::', 1)
    row = Row(scope, rest.split('/')[0], config, image_size=image_size)
    start = time.perf_counter()
    try:
        with offline():
            cfg = load_stock_config(config)
            why = fetches_at_build(cfg.model.to_dict())
            if why:
                row.stock, row.reason = 'not built', why
                return row
            try:
                build_and_run(cfg, image_size)
            except Exception as e:  # noqa: BLE001  recorded, not raised
                # e.g. DINO's 900 queries need more encoder tokens than a small image has
                if retry_size is None or not SIZE_ERRORS.search(str(e)):
                    row.stock, row.reason = 'fails', _reason(e)
                    return row
                try:
                    build_and_run(cfg, retry_size)
                except Exception as e:  # noqa: BLE001
                    row.stock, row.reason = 'fails', f'{_reason(e)} (also at {retry_size} px)'
                    return row
                row.image_size = image_size = retry_size
            row.stock = 'works'
            gc.collect()
            try:
                swapped = swap_config(cfg, arch, checkpoint=None)
            except SwapError as e:
                row.swap, row.reason = 'refused', str(e)
                return row
            except Exception as e:  # noqa: BLE001  a bug of the swap: recorded as a failure
                row.swap, row.reason = 'fails', f'swap_config raised {_reason(e)}'
                return row
            try:
                build_and_run(swapped, image_size)
            except Exception as e:  # noqa: BLE001
                row.swap, row.reason = 'fails', _reason(e)
                return row
            row.swap = 'swapped'
    except SwapError as e:  # the config itself cannot be loaded
        row.stock, row.reason = 'fails', str(e)
    finally:
        row.seconds = time.perf_counter() - start
        gc.collect()
    return row


def totals(rows: Sequence[Row]) -> dict[str, int]:
    works = [r for r in rows if r.stock == 'works']
    return dict(configs=len(rows), stock_works=len(works),
                swapped=sum(r.swap == 'swapped' for r in works),
                refused=sum(r.swap == 'refused' for r in works),
                swap_fails=sum(r.swap == 'fails' for r in works),
                stock_fails=sum(r.stock == 'fails' for r in rows),
                not_built=sum(r.stock == 'not built' for r in rows))


def coverage_markdown(rows: Sequence[Row], arch: str, image_size: int, command: str,
             wall_s: float) -> str:
    """The coverage page: totals, then one row per config."""
    t = totals(rows)
    share = 100. * t['swapped'] / max(t['stock_works'], 1)
    import mmdet
    import mmseg
    lines = [
        '# Swapping PVT into stock mmdet / mmseg configs: coverage',
        '',
        f'Generated by `{command}` (wall time {wall_s / 60:.1f} min, arch `{arch}`, one '
        f'{image_size}x{image_size} synthetic image, random weights, offline) with mmdet '
        f'{mmdet.__version__}, mmseg {mmseg.__version__}, torch {torch.__version__} on '
        f'{platform.machine()} CPU.',
        '',
        'Each config is first built and run stock (`model.test_step` on the image); only '
        'configs that work here are swapped (`pvt_mm.swap.swap_config`), built and run again. '
        '"not built": building it would load a teacher or text model from weights. '
        f'Test-time proposal/detection counts ({", ".join(CAPPED_KEYS)}) are capped at '
        f'{TEST_CAP} for speed (random weights propose boxes everywhere); a stock config '
        'that fails with an error about sizes is run once more at 256 px (so is its swap).',
        '',
        f'**Totals: {t["swapped"]} of {t["stock_works"]} stock configs that work here swap, '
        f'build and run ({share:.1f}%)**; {t["refused"]} refused with the reason, '
        f'{t["swap_fails"]} fail after the swap; of {t["configs"]} configs, '
        f'{t["stock_fails"]} fail stock here and {t["not_built"]} are not built.',
        '',
        '| package | method | config | stock | swap | reason |',
        '|---|---|---|---|---|---|',
    ]
    for r in rows:
        name = r.config.split('/', 1)[1]
        reason = r.reason.replace('|', '\\|')
        if r.stock == 'works' and r.image_size != image_size:
            reason = f'(run at {r.image_size} px) {reason}'.strip()
        lines.append(f'| {r.scope} | {r.folder} | `{name}` | {r.stock} | {r.swap or "-"} | '
                     f'{reason} |')
    return '\n'.join(lines) + '\n'


@contextlib.contextmanager
def cached_metafiles() -> Iterator[None]:
    """mmengine re-reads all ~400 metafiles of mmdet/mmseg for every ``pkg::`` base it
    resolves; read each once while the sweep runs (restored afterwards)."""
    import functools

    import mmengine.config.utils as config_utils
    saved = config_utils.load
    config_utils.load = functools.lru_cache(maxsize=None)(saved)
    try:
        yield
    finally:
        config_utils.load = saved


@contextlib.contextmanager
def quiet_builds() -> Iterator[None]:
    """While configs are built and run: mmengine's logger at WARNING (model builds log every
    parameter's initialisation, thousands of lines per sweep), warnings ignored and what the
    packages print swallowed; the sweep's own line per config carries the outcome."""
    import io
    import logging
    import warnings

    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink):
            warnings.simplefilter('ignore')
            yield
    finally:
        logger.setLevel(level)


def sweep(configs: Sequence[str], arch: str = 'b0', image_size: int = 128,
          log: Any = print) -> list[Row]:
    """:func:`check_config` for each config (``pkg::folder/name.py``), quietly
    (:func:`quiet_builds`): ``log`` gets one line per config."""
    rows = []
    with cached_metafiles():
        for i, config in enumerate(configs, 1):
            with quiet_builds():
                row = check_config(config, arch, image_size)
            rows.append(row)
            log(f'[{i}/{len(configs)}] {config}: stock {row.stock}'
                f'{", swap " + row.swap if row.swap else ""} ({row.seconds:.1f} s)'
                f'{": " + row.reason if row.reason else ""}')
    return rows


def run_sweep(which: str, arch: str = 'b0', all_configs: bool = False,
              only: Sequence[str] | None = None, image_size: int = 128,
              markdown: Path | None = None, threads: int | None = 1) -> int:
    """The ``tools/swap_backbone.py --sweep`` entry point; exit status 1 when a swapped
    config fails (a refusal with its reason is not a failure). ``threads``: torch threads
    (1 by default: many small kernels, and a shared machine collapses multi-thread ones)."""
    import sys
    arch = resolve_arch(arch)
    if threads:
        torch.set_num_threads(threads)
    scopes = SCOPES if which == 'all' else (which,)
    configs = [c for s in scopes for _, c in find_configs(s, all_configs, only)]
    start = time.perf_counter()
    rows = sweep(configs, arch, image_size, log=lambda m: print(m, flush=True))
    wall = time.perf_counter() - start
    command = '.venv/bin/python tools/swap_backbone.py ' + ' '.join(sys.argv[1:]) \
        if sys.argv[0].endswith('swap_backbone.py') else f'run_sweep({which!r})'
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(coverage_markdown(rows, arch, image_size, command, wall))
        print(f'wrote {markdown}')
    t = totals(rows)
    print(f'{t["swapped"]}/{t["stock_works"]} swapped, {t["refused"]} refused, '
          f'{t["swap_fails"]} failing after the swap; wall {wall:.0f} s')
    return 1 if t['swap_fails'] else 0
