"""Command lines of ``tools/train.py`` and ``tools/test.py``: the flags of mmdet's and mmseg's
own tools, for detection and segmentation configs alike (the config's ``default_scope``
decides)."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from ..arch import OFFICIAL_NAMES
from ..loading.checkpoint import resolve_checkpoint
from ..loading.errors import CheckpointError
from .checkpoint_io import check_checkpoint_file
from .config_check import check_data_config
from .runtime import build_runner, enable_amp, load_config, set_resume, task_scope

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')
PICKLE_SUFFIXES = ('.pkl', '.pickle')
DEBUG_ENV = 'PVT_MM_DEBUG'  # set (or --debug) to see the traceback of a user error


class InputsMissing(FileNotFoundError):
    """Several inputs of a run are missing (data, pretrained weights, a checkpoint): one
    message line per missing input, so a user learns about all of them in one run."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__('\n'.join(self.problems) if len(self.problems) == 1 else
                         f'{len(self.problems)} inputs are missing:\n' +
                         '\n'.join(f'  - {p}' for p in self.problems))


def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input (missing files or data, a wrong checkpoint, a bad
    argument or config value): shown as their message, without a traceback."""
    return (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
            CheckpointError, ValueError, TypeError)


def run_tool(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None,
             prog: str | None = None) -> int:
    """Run a tool's ``main(argv)``; a user error (:func:`user_error_types`) prints its message
    (one line per problem) and returns 1, unless ``--debug`` is in ``argv`` (it is removed
    before ``main`` sees it) or ``$PVT_MM_DEBUG`` is set: then the error propagates with its
    traceback. Returns 0 (or ``main``'s int result) otherwise."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = '--debug' in args or bool(os.environ.get(DEBUG_ENV))
    args = [a for a in args if a != '--debug']
    prog = prog or os.path.basename(sys.argv[0] or 'pvt_mm')
    try:
        result = main(args)
    except user_error_types() as e:
        if debug:
            raise
        name = type(e).__name__
        first, *rest = (str(e).strip() or name).splitlines()
        label = 'error' if isinstance(e, InputsMissing) else name
        print('\n'.join([f'{prog}: {label}: {first}  [--debug: traceback]', *rest]),
              file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


def _pvt_backbones(node: Any) -> Iterator[Mapping[str, Any]]:
    """Every pvt_mm backbone dict (``type`` PVT / PVTv2 / an official name) inside ``node``."""
    names = {'PVT', 'PVTv2', *OFFICIAL_NAMES}
    if isinstance(node, Mapping):
        if node.get('type') in names:
            yield node
        for value in node.values():
            yield from _pvt_backbones(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _pvt_backbones(value)


def pretrained_problems(cfg: Config | Mapping[str, Any]) -> list[str]:
    """The ``Pretrained`` checkpoints (and ``pretrained=`` paths) of the config's pvt_mm
    backbones that cannot be found locally or in the torch hub cache (one message each)."""
    sources: list[str] = []
    for backbone in _pvt_backbones(cfg.get('model')):
        inits = backbone.get('init_cfg')
        for init in inits if isinstance(inits, (list, tuple)) else [inits]:
            if isinstance(init, Mapping) and init.get('type') == 'Pretrained' \
                    and isinstance(init.get('checkpoint'), str):
                sources.append(init['checkpoint'])
        if isinstance(backbone.get('pretrained'), str):
            sources.append(backbone['pretrained'])
    problems = []
    for source in dict.fromkeys(sources):
        try:
            resolve_checkpoint(source)
        except FileNotFoundError as e:
            problems.append(str(e))
    return problems


def complete_init_cfgs(cfg: Config) -> None:
    """``--cfg-options model.backbone.init_cfg.checkpoint=FILE`` on a backbone whose
    ``init_cfg`` was None leaves ``init_cfg=dict(checkpoint=FILE)``, which mmengine fails on
    (``KeyError: 'type'``) after building everything: such a dict becomes a ``Pretrained``
    init (the README's advice); a typeless ``init_cfg`` without a checkpoint is an error
    naming it, before anything is built."""
    model = cfg.get('model')
    if not isinstance(model, Mapping):
        return
    for where, sub in (('model', model), *((f'model.{k}', model.get(k))
                                           for k in ('detector', 'reid'))):
        backbone = sub.get('backbone') if isinstance(sub, Mapping) else None
        init = backbone.get('init_cfg') if isinstance(backbone, Mapping) else None
        if not isinstance(init, Mapping) or 'type' in init:
            continue
        if 'checkpoint' not in init:
            raise ValueError(f'{where}.backbone.init_cfg={dict(init)} has no type; give '
                             f'{where}.backbone.init_cfg.checkpoint=FILE (a Pretrained init) '
                             "or a type, e.g. init_cfg.type='Pretrained'")
        init['type'] = 'Pretrained'


def check_inputs(cfg: Config, mode: str, checkpoint: str | None = None) -> None:
    """Before anything is built: the data the run reads and (training) every pretrained
    checkpoint of a pvt_mm backbone, or (testing) the checkpoint to test. Raises
    :class:`InputsMissing` naming all that is missing at once."""
    problems = []
    if checkpoint is not None:
        try:
            check_checkpoint_file(checkpoint, 'checkpoint')
        except FileNotFoundError as e:
            problems.append(str(e))
    try:
        check_data_config(cfg, mode)  # annotation files and image folders exist
    except FileNotFoundError as e:
        problems.append(str(e))
    if mode == 'train':
        problems += pretrained_problems(cfg)
    if problems:
        raise InputsMissing(problems)


def _parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('config', help='config file (MMDetection or MMSegmentation)')
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, xxx=yyy pairs merged into the config, e.g. '
        'train_cfg.max_epochs=2 "model.backbone.arch=b1"')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    parser.add_argument('--debug', action='store_true',
                        help='show the traceback of an input error (missing data or '
                        'weights, a bad value) instead of its message alone (or set '
                        f'{DEBUG_ENV}=1)')


def _finish(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def parse_train_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = _parser('Train a detector or segmentor')
    parser.add_argument('--work-dir', help='the dir to save logs and checkpoints')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint, or (no path) from the latest one in the work dir')
    parser.add_argument(
        '--amp', action='store_true',
        help='mixed precision: fp16 AmpOptimWrapper on CUDA, bfloat16 autocast on CPU')
    _add_common(parser)
    return _finish(parser, argv)


def parse_test_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = _parser('Test (and evaluate) a detector or segmentor')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument(
        '--out', help='detection: dump predictions to this .pkl file; segmentation: save '
        'predicted label maps in this directory')
    parser.add_argument('--show-dir', help='save painted predictions here (under the work dir '
                        'timestamp folder, as mmdet/mmseg do)')
    _add_common(parser)
    return _finish(parser, argv)


def train_config(args: argparse.Namespace) -> Config:
    """The training config for parsed ``tools/train.py`` arguments."""
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    complete_init_cfgs(cfg)
    if args.amp:
        enable_amp(cfg)
    set_resume(cfg, args.resume)
    check_inputs(cfg, 'train')  # data and pretrained weights, all reported at once
    return cfg


def _show_predictions(cfg: Config, scope: str, show_dir: str) -> None:
    hooks = cfg.get('default_hooks', {})
    if 'visualization' not in hooks:
        raise RuntimeError('--show-dir needs a visualization hook in default_hooks, e.g. '
                           "visualization=dict(type='DetVisualizationHook')")
    if scope == 'mmdet':
        from mmdet.engine.hooks.utils import trigger_visualization_hook
        trigger_visualization_hook(cfg, argparse.Namespace(show=False, show_dir=show_dir))
    else:  # as mmseg's tools/test.py: the visualizer saves under its save_dir
        hooks['visualization']['draw'] = True
        cfg.visualizer['save_dir'] = show_dir


def test_config(args: argparse.Namespace) -> Config:
    """The testing config for parsed ``tools/test.py`` arguments (loads ``args.checkpoint``)."""
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    complete_init_cfgs(cfg)
    check_inputs(cfg, 'test', args.checkpoint)  # the checkpoint and the data, at once
    cfg.load_from = args.checkpoint
    scope = task_scope(cfg)
    if args.show_dir:
        _show_predictions(cfg, scope, args.show_dir)
    if args.out and scope == 'mmseg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    elif args.out and not args.out.endswith(PICKLE_SUFFIXES):
        raise ValueError(f'--out must be a {"/".join(PICKLE_SUFFIXES)} file, got {args.out}')
    return cfg


def test_runner(args: argparse.Namespace) -> Runner:
    """The Runner for ``tools/test.py``; detection ``--out`` dumps results as mmdet does."""
    cfg = test_config(args)
    runner = build_runner(cfg)
    if args.out and task_scope(cfg) == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    return runner


def train_main(argv: Sequence[str] | None = None) -> None:
    build_runner(train_config(parse_train_args(argv))).train()


def test_main(argv: Sequence[str] | None = None) -> dict:
    return test_runner(parse_test_args(argv)).test()


def train_tool(argv: Sequence[str] | None = None) -> int:
    """``tools/train.py``: :func:`train_main`, user errors as one message (:func:`run_tool`)."""
    return run_tool(train_main, argv, 'train.py')


def test_tool(argv: Sequence[str] | None = None) -> int:
    """``tools/test.py``: :func:`test_main`, user errors as one message (:func:`run_tool`)."""
    def main(args: list[str]) -> int:
        test_main(args)
        return 0
    return run_tool(main, argv, 'test.py')
