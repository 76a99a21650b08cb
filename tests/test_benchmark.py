"""tools/benchmark.py end to end on tiny inputs (speed itself is not asserted).

One run per model at 64x64 with 1 CPU thread: the backbone comparison (ours vs mmdet's
built-in) in fp32 / bf16 / train with the with_cp variant, the peak-memory subprocess, the
Markdown and plot outputs; then a detector config's training step with with_cp on and off.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from pvt_mm.analysis.benchmark import Result, backbone_candidates
from pvt_mm.analysis.models import with_backbone_impl
from pvt_mm.analysis.report import ratio_lines, write_markdown
from pvt_mm.engine.runtime import read_model_config

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
MIN_COSINE = 0.999  # the bar for our bf16 stage outputs
TINY = ['--shape', '64', '--runs', '1', '--warmup', '0', '--threads', '1']


def _tool():
    spec = importlib.util.spec_from_file_location('benchmark_tool', ROOT / 'tools' / 'benchmark.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(out: str, label: str) -> dict[str, list[str]]:
    """mode -> cells of the text-table row of ``label``."""
    rows = {}
    for line in out.splitlines():
        cells = re.split(r'\s{2,}', line.strip())
        if cells[0] == label:
            rows[cells[1]] = cells
    return rows


def test_backbone_benchmark_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    md, png = tmp_path / 'bench.md', tmp_path / 'bench.png'
    _tool().main(['--arch', 'b0', *TINY, '--mode', 'fp32', 'bf16', 'train', '--with-cp',
                  '--peers', 'mmdet', '--memory-modes', 'fp32', '--markdown', str(md),
                  '--plot', str(png)])
    out = capsys.readouterr().out
    ours, peer = _rows(out, 'pvt_mm b0'), _rows(out, 'mmdet b0')
    assert set(ours) == set(peer) == {'fp32', 'bf16', 'train'}
    assert set(_rows(out, 'pvt_mm b0 with_cp')) == {'train'}  # with_cp only trains
    for mode, cells in ours.items():
        assert float(cells[4]) > 0 and float(cells[5]) > 0  # latency ms, images/s
        assert cells[7] == '1.00x'  # speedup column against itself
        assert float(cells[12]) >= 0  # MiB of fresh pages faulted in per step
    # peak memory from the subprocess: at least the weights (3.4M fp32 parameters)
    weights_mib = 3.4e6 * 4 / 2 ** 20
    assert float(ours['fp32'][6]) > weights_mib and float(peer['fp32'][6]) > weights_mib
    assert ours['bf16'][6] == '-'  # not asked for
    assert float(ours['bf16'][9].split()[0]) >= MIN_COSINE
    assert re.search(r'fp32 64x64 batch 1: pvt_mm b0: speedup vs mmdet: [\d.]+x, '
                     r'peak memory ours / mmdet: [\d.]+x', out)
    assert re.search(r'bf16 64x64 batch 1: pvt_mm b0: bf16 speedup vs mmdet fp32: [\d.]+x', out)
    assert re.search(r'train .*with_cp step time [\d.]+x, loss with / without ([\d.]+) / \1 ',
                     out)  # same seed and data: activation checkpointing keeps the loss
    text = md.read_text()
    assert 'python tools/benchmark.py --arch b0' in text and '| pvt_mm b0 | fp32 |' in text
    assert '![benchmark plot](bench.png)' in text and 'load average' in text
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_config_training_step_with_cp(capsys: pytest.CaptureFixture) -> None:
    config = str(ROOT / 'configs' / 'retinanet_pvt_v2_b0_fpn_1x_coco.py')
    _tool().main(['--config', config, *TINY, '--mode', 'train', '--with-cp',
                  '--memory-modes'])
    out = capsys.readouterr().out
    name = 'retinanet_pvt_v2_b0_fpn_1x_coco'
    losses = {label: float(_rows(out, f'{name} [{label}]')['train'][11])  # 'last loss'
              for label in ('pvt_mm', 'pvt_mm with_cp', 'mmdet')}
    assert losses['pvt_mm'] == losses['pvt_mm with_cp'] > 0
    assert 'speedup vs mmdet' in out


def test_candidates_and_ratio_wording() -> None:
    """b2_li has no mmdet peer: our b2 stands in; ratios read 'their time / ours'."""
    labels = [c.label for c in backbone_candidates('b2_li')]
    assert labels == ['pvt_mm b2_li', 'pvt_mm b2 (no mmdet peer)', 'timm b2_li']
    assert [c.impl for c in backbone_candidates('small')] == ['pvt_mm', 'mmdet']  # no timm v1

    def result(label: str, impl: str, role: str, seconds: float, mib: float) -> Result:
        return Result(label, role, impl, 'b2', 'fp32', (224, 224), 1, [seconds],
                      memory_mib=mib)

    lines = ratio_lines([result('pvt_mm b2', 'pvt_mm', 'ours', 0.1, 100.),
                         result('mmdet b2', 'mmdet', 'peer', 0.3, 150.)])
    assert lines == ['fp32 224x224 batch 1: pvt_mm b2: speedup vs mmdet: 3.00x, '
                     'peak memory ours / mmdet: 0.67x']


def test_backbone_swap_between_implementations() -> None:
    ours = read_model_config(ROOT / 'configs' / 'retinanet_pvt_s_fpn_1x_coco.py')
    theirs = with_backbone_impl(ours, 'mmdet')
    assert theirs.model.backbone == dict(
        type='PyramidVisionTransformer', embed_dims=64, num_layers=[3, 4, 6, 3],
        num_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1], mlp_ratios=[8, 8, 4, 4],
        out_indices=(0, 1, 2, 3), drop_path_rate=0.1)  # pretrained init dropped
    back = with_backbone_impl(theirs, 'pvt_mm').model.backbone
    assert (back.type, back.arch) == ('PVT', 'small')
    seg_cfg = read_model_config(ROOT / 'configs' / 'fpn_pvt_v2_b0_512x512_40k_ade20k.py')
    seg = with_backbone_impl(seg_cfg, 'mmdet').model.backbone  # mmseg: names mmdet's registry
    assert (seg.type, seg.embed_dims) == ('mmdet.PyramidVisionTransformerV2', 32)
    li = read_model_config(ROOT / 'configs' / 'retinanet_pvt_v2_b2_li_fpn_1x_coco.py')
    assert with_backbone_impl(li, 'mmdet') is None  # mmdet has no PVTv2-li


def test_markdown_section_is_replaced_in_place(tmp_path: Path) -> None:
    doc = tmp_path / 'doc.md'
    doc.write_text('# Title\n<!-- benchmark:a -->\nold\n<!-- /benchmark:a -->\ntail\n')
    write_markdown(doc, 'new 1\n', 'a')
    write_markdown(doc, 'new 2\n', 'a')
    write_markdown(doc, 'other\n', 'b')  # no markers yet: appended with them
    assert doc.read_text() == ('# Title\n<!-- benchmark:a -->\nnew 2\n<!-- /benchmark:a -->\n'
                               'tail\n<!-- benchmark:b -->\nother\n<!-- /benchmark:b -->\n')


def test_bad_input_is_named() -> None:
    tool = _tool()
    with pytest.raises(SystemExit, match="unknown PVT arch 'b7'"):
        tool.main(['--arch', 'b7'])
    with pytest.raises(SystemExit, match='fp16 autocast is benchmarked on CUDA only'):
        tool.main(['--arch', 'b0', *TINY, '--mode', 'fp16'])


def test_op_profile_counts_the_matmul_flops(capsys: pytest.CaptureFixture) -> None:
    """tools/profile_ops.py: per-op self times (largest first) and the FLOPs of the matmuls
    that ran (positive, and fewer than the model's, which also counts the convolutions)."""
    from pvt_mm.analysis.flops import backbone_complexity
    from pvt_mm.analysis.op_profile import profile_backbone
    spec = importlib.util.spec_from_file_location('profile_tool', ROOT / 'tools' / 'profile_ops.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main(['--arch', 'b0', '--shape', '64', '96', '--mode', 'fp32', 'bf16', '--top', '3'])
    out = capsys.readouterr().out
    assert out.count('matmuls: ') == 2 and 'mkldnn::_linear_pointwise' in out
    prof = profile_backbone('b0', (64, 96))
    assert prof.ops[0][1] >= prof.ops[-1][1] and prof.total_ms >= prof.matmul_ms > 0
    flops = 2 * backbone_complexity('b0', (64, 96)).flops / 1e9
    assert 0 < prof.matmul_gflop < flops
    with pytest.raises(ValueError, match='mode'):
        profile_backbone('b0', (64, 96), 'fp16')
