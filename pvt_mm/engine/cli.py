"""Command lines of ``tools/train.py`` and ``tools/test.py``: the flags of mmdet's and mmseg's
own tools, for detection and segmentation configs alike (the config's ``default_scope``
decides)."""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from .checkpoint_io import check_checkpoint_file
from .config_check import check_data_config
from .runtime import build_runner, enable_amp, load_config, set_resume, task_scope

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')
PICKLE_SUFFIXES = ('.pkl', '.pickle')


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
    if args.amp:
        enable_amp(cfg)
    set_resume(cfg, args.resume)
    check_data_config(cfg, 'train')  # annotation files and image folders exist
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
    check_checkpoint_file(args.checkpoint, 'checkpoint')
    cfg.load_from = args.checkpoint
    check_data_config(cfg, 'test')  # annotation files and image folders exist
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
