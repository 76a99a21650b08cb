"""tools/train.py and tools/test.py end to end on a tiny demo dataset (in-process through
the same entry points the scripts call): Mask R-CNN train -> checkpoint -> test with COCO bbox
and segm metrics, resume continuing from the last iteration, semantic FPN mIoU, CPU AMP,
the weights_only checkpoint allow-list, the demo pipeline, and clear errors."""
from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path

import pytest
import torch
from mm_helpers import miou_of_saved_predictions
from mmengine.config import Config

from pvt_mm.demo import SEG_CLASSES, DemoDataSpec
from pvt_mm.demo.pipeline import run_demo
from pvt_mm.engine import cli  # module import: pytest would collect cli.test_main
from pvt_mm.engine.cpu import CPUAmpOptimWrapper
from pvt_mm.loading.checkpoint import read_checkpoint
from pvt_mm.engine.runtime import (build_runner, load_config, read_config, task_scope,
                                   use_scope)

ROOT = Path(__file__).resolve().parents[1]
MASK_RCNN = str(ROOT / 'configs/demo/mask-rcnn_pvtv2-b0_fpn_demo.py')
ATSS = str(ROOT / 'configs/demo/atss_pvtv2-b0_fpn_demo.py')  # the demo's detector
SEG = str(ROOT / 'configs/demo/fpn_pvtv2-b0_demo-seg.py')
TINY = DemoDataSpec(num_train=8, num_val=4)  # tiny_data's size (conftest.py)
BATCH = 4
ITERS_PER_EPOCH = TINY.num_train // BATCH


def _options(**extra) -> list[str]:
    """--cfg-options for quick runs: small batches, data loading in this process (no worker
    processes left behind), one log line per iteration, a unique experiment name (runners
    built in one process within a second would share a logger)."""
    opts = {'experiment_name': f'test_{uuid.uuid4().hex[:8]}',
            'train_dataloader.batch_size': BATCH, 'default_hooks.logger.interval': 1}
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if loader not in extra:
            opts.update({f'{loader}.num_workers': 0, f'{loader}.persistent_workers': False})
    opts.update(extra)
    return ['--cfg-options'] + [f'{k}={v}' for k, v in opts.items()]


@pytest.fixture(scope='module')
def mask_rcnn_run(tiny_data, tmp_path_factory) -> Path:
    """One epoch of Mask R-CNN; later tests test and resume it."""
    work_dir = tmp_path_factory.mktemp('mask_rcnn')
    cli.train_main([MASK_RCNN, '--work-dir', str(work_dir),
                *_options(**{'train_cfg.max_epochs': 1})])
    return work_dir


def _meta(checkpoint: Path) -> dict:
    return read_checkpoint(checkpoint)['meta']  # weights_only, Runner globals scoped to it


def _evaluate_offline(config: str, dumped: list) -> dict:
    """The config's test evaluator on the predictions tools/test.py dumped with ``--out``, no
    model involved (as mmdet's tools/analysis_tools/eval_metric.py evaluates a .pkl)."""
    from mmengine.evaluator import Evaluator
    cfg = read_config(config)
    use_scope(task_scope(cfg))
    evaluator = Evaluator(cfg.test_evaluator)
    evaluator.dataset_meta = dict(cfg.test_dataloader.dataset.metainfo)
    return evaluator.offline_evaluate(dumped)


def test_train_writes_checkpoint(mask_rcnn_run: Path):
    ckpt = mask_rcnn_run / 'epoch_1.pth'
    assert ckpt.is_file() and (mask_rcnn_run / 'last_checkpoint').is_file()
    meta = _meta(ckpt)
    assert (meta['epoch'], meta['iter']) == (1, ITERS_PER_EPOCH)


def test_test_reports_bbox_and_segm_metrics(mask_rcnn_run: Path, tmp_path, capfd):
    out = tmp_path / 'results.pkl'
    metrics = cli.test_main([MASK_RCNN, str(mask_rcnn_run / 'epoch_1.pth'), '--work-dir',
                             str(tmp_path), '--out', str(out), '--show-dir', 'shown',
                             *_options()])
    printed = capfd.readouterr().out
    assert 'Evaluate annotation type *bbox*' in printed
    assert 'Evaluate annotation type *segm*' in printed
    with open(out, 'rb') as f:
        dumped = pickle.load(f)
    assert len(dumped) == TINY.num_val and 'masks' in dumped[0]['pred_instances']
    assert len(list(tmp_path.glob('*/shown/*.jpg'))) == TINY.num_val
    # the reported metrics are those of the predictions it dumped, against the val annotations
    offline = _evaluate_offline(MASK_RCNN, dumped)
    assert {'coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'} <= \
        offline.keys()
    assert {key: metrics[key] for key in offline} == offline


def test_resume_continues_from_last_iteration(mask_rcnn_run: Path):
    first = mask_rcnn_run / 'epoch_1.pth'
    first_mtime = first.stat().st_mtime_ns
    cli.train_main([MASK_RCNN, '--work-dir', str(mask_rcnn_run), '--resume',
                *_options(**{'train_cfg.max_epochs': 2})])
    meta = _meta(mask_rcnn_run / 'epoch_2.pth')
    assert (meta['epoch'], meta['iter']) == (2, 2 * ITERS_PER_EPOCH)
    assert first.stat().st_mtime_ns == first_mtime, 'epoch 1 was not trained again'
    log = sorted(mask_rcnn_run.glob('*/*.log'))[-1].read_text()
    assert f'resumed epoch: 1, iter: {ITERS_PER_EPOCH}' in log
    assert 'Epoch(train) [2][' in log.replace('  ', ' ')
    assert 'Epoch(train) [1][' not in log.replace('  ', ' ')


def test_resume_from_explicit_checkpoint(mask_rcnn_run: Path):
    args = cli.parse_train_args([MASK_RCNN, '--resume', str(mask_rcnn_run / 'epoch_1.pth')])
    cfg = cli.train_config(args)
    assert cfg.resume and cfg.load_from == str(mask_rcnn_run / 'epoch_1.pth')


def test_checkpoints_load_with_weights_only(mask_rcnn_run: Path):
    """Runner checkpoints read with the safe loader through pvt_mm's scoped allow-list; the
    tools left nothing in torch's process-wide one (tests/test_security.py: the payloads)."""
    ckpt = mask_rcnn_run / 'epoch_1.pth'
    with pytest.raises(Exception, match='weights_only|Unsupported global'):
        torch.load(ckpt, weights_only=True)
    loaded = read_checkpoint(ckpt)
    assert loaded['message_hub']['log_scalars']['train/loss'].current() > 0


def test_segmentation_train_and_test(tiny_data, tmp_path):
    cli.train_main([SEG, '--work-dir', str(tmp_path),
                *_options(**{'train_cfg.max_iters': 2, 'train_cfg.val_interval': 2,
                             'default_hooks.checkpoint.interval': 2})])
    ckpt = tmp_path / 'iter_2.pth'
    assert _meta(ckpt)['iter'] == 2
    metrics = cli.test_main([SEG, str(ckpt), '--work-dir', str(tmp_path), '--out',
                             str(tmp_path / 'pred'), '--show-dir', str(tmp_path / 'shown'),
                             *_options(**{
                                 'default_hooks.visualization.interval': 1})])  # mmseg: 50
    assert len(list((tmp_path / 'pred').glob('*.png'))) == TINY.num_val
    # the reported mIoU is that of the label maps it saved, against the val annotations
    assert metrics['mIoU'] == pytest.approx(miou_of_saved_predictions(
        tmp_path / 'pred', tiny_data / 'ade/annotations/validation', len(SEG_CLASSES)), abs=0.01)
    assert len(list((tmp_path / 'shown').rglob('*.png'))) == TINY.num_val


def test_amp_on_cpu_uses_bf16_autocast(tiny_data, tmp_path):
    cfg = cli.train_config(cli.parse_train_args(
        [ATSS, '--amp', '--work-dir', str(tmp_path),
         *_options(**{'train_cfg.max_epochs': 1, 'train_dataloader.batch_size': 8,
                      'val_cfg': None, 'val_dataloader': None, 'val_evaluator': None})]))
    assert cfg.optim_wrapper.type == 'CPUAmpOptimWrapper'
    runner = build_runner(cfg)
    seen = []  # the FPN's convolutions run in bfloat16 under CPU autocast
    handle = runner.model.neck.register_forward_hook(lambda mod, inp, out: seen.append(
        (mod.training, torch.is_autocast_enabled('cpu'), out[0].dtype)))
    runner.train()
    handle.remove()
    assert isinstance(runner.optim_wrapper, CPUAmpOptimWrapper)
    trained = [(on, dtype) for training, on, dtype in seen if training]  # not validation
    assert trained and all(on and dtype == torch.bfloat16 for on, dtype in trained)
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())


def test_cpu_amp_explains_ops_without_bf16_kernels():
    model = torch.nn.Linear(2, 2)
    wrapper = CPUAmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match='no bfloat16 CPU kernel.*without --amp'):
        with wrapper.optim_context(model):
            raise RuntimeError('expected scalar type Float but found BFloat16')  # mmcv's nms
    with pytest.raises(ValueError, match='bfloat16'):
        CPUAmpOptimWrapper(dtype='float16', optimizer=torch.optim.SGD(model.parameters(), 0.1))


def test_demo_pipeline_runs_and_reports(tiny_data, tmp_path, capsys):
    status = run_demo(['--data-root', str(tiny_data), '--work-dir', str(tmp_path),
                       '--num-train', str(TINY.num_train), '--num-val', str(TINY.num_val),
                       '--det-epochs', '1', '--skip-seg', '--min-map50', '0'])
    printed = capsys.readouterr().out
    assert status == 0
    assert 'bbox mAP@0.5' in printed and 'reaches the target' in printed
    assert (tmp_path / 'det' / 'epoch_1.pth').is_file()


def test_config_checkpoint_and_launcher_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match='config file not found'):
        load_config(tmp_path / 'missing.py')
    other = tmp_path / 'other_scope.py'
    other.write_text("default_scope = 'mmpretrain'\n")
    with pytest.raises(ValueError, match='default_scope'):
        load_config(other)
    with pytest.raises(FileNotFoundError, match='--resume checkpoint not found'):
        cli.train_config(cli.parse_train_args([ATSS, '--resume', str(tmp_path / 'nope.pth')]))
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        cli.test_main([ATSS, str(tmp_path / 'nope.pth')])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='torchrun'):
            load_config(ATSS, launcher='slurm')
        cfg = load_config(ATSS, launcher='pytorch')
        assert cfg.env_cfg.dist_cfg.backend == 'gloo'
        assert cfg.model_wrapper_cfg.type == 'CPUDistributedDataParallel'
    assert isinstance(Config.fromfile(ATSS), Config)
    assert os.environ.get('LOCAL_RANK') is not None  # set by the parsers as mmdet's tools do


def test_each_runner_gets_its_own_visualizer(tiny_data, tmp_path):
    """mmengine would hand a second runner in one process the first one's visualizer (same
    name, the first run's save_dir) while hooks draw with the newest instance of any class."""
    from mmengine.visualization import Visualizer
    runners = [build_runner(load_config(ATSS, None, str(tmp_path / str(i)))) for i in range(2)]
    first, second = (r.visualizer for r in runners)
    assert first is not second
    assert Visualizer.get_current_instance() is second
    assert second._vis_backends['LocalVisBackend']._save_dir.startswith(str(tmp_path / '1'))
