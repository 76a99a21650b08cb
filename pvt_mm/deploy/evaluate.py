"""``tools/test.py CONFIG MODEL.onnx --runtime onnxruntime|openvino``: the config's test data,
pipeline and evaluator (COCO bbox mAP, mIoU, ...) on an end-to-end .onnx.

The Runner is built from the config as for a checkpoint; its model is then replaced by
:class:`~pvt_mm.deploy.infer.DeployedModel`, whose ``test_step`` runs the graph on each image
the test pipeline yields (so the pipeline's own resize is the one evaluated)."""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from mmengine.config import DictAction
from pvt_mm_runtime.checks import checked_metadata

from ..engine.cli import run_tool
from ..engine.config_check import check_data_config
from ..engine.runtime import build_runner, load_config
from .infer import DeployedModel
from .runtimes import PRECISIONS, RUNTIMES


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='tools/test.py', description=__doc__)
    p.add_argument('config', help='the config the model was exported from (data, evaluator)')
    p.add_argument('model', help='an end-to-end .onnx (tools/export_onnx.py --end2end)')
    p.add_argument('--runtime', choices=RUNTIMES, default='onnxruntime')
    p.add_argument('--precision', choices=PRECISIONS, default='fp32')
    p.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys')
    return p.parse_args(argv)


def test_onnx(config: str, model: str, runtime: str = 'onnxruntime', precision: str = 'fp32',
              work_dir: str | None = None, cfg_options: dict | None = None) -> dict:
    """The config's evaluator on ``model``; returns the metrics."""
    if not os.path.isfile(model):
        raise FileNotFoundError(f'model not found: {model}')
    meta = checked_metadata(model)
    cfg = load_config(config, cfg_options, work_dir)
    check_data_config(cfg, 'test')
    deployed = DeployedModel(model, runtime, precision)
    classes = list(cfg.test_dataloader.dataset.get('metainfo', {}).get('classes') or [])
    if classes and classes != meta['classes']:
        raise ValueError(f'{model} predicts {meta["classes"]}, the config\'s test data has '
                         f'{classes}')
    cfg.load_from = None
    runner = build_runner(cfg)
    runner.model = deployed
    return runner.test()


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    return test_onnx(args.config, args.model, args.runtime, args.precision, args.work_dir,
                     args.cfg_options)


def tool(argv: Sequence[str] | None = None) -> int:
    """``tools/test.py CONFIG MODEL.onnx``: :func:`main`, user errors as one message."""
    def run(args: list[str]) -> int:
        metrics = main(args)
        print({k: float(v) if hasattr(v, 'item') else v for k, v in metrics.items()})
        return 0
    return run_tool(run, argv, 'test.py')
