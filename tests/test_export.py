"""ONNX export (pvt_mm.deploy, tools/export_onnx.py) and the exported graphs in ONNX Runtime
and OpenVINO at input sizes other than the traced one, and the benchmark's runtime mode."""
from __future__ import annotations

import runpy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pvt_mm.deploy import RuntimeModel, check_onnx_graph, export_onnx, parity
from pvt_mm.deploy.export import backbone_output_names, build_model_for_export
from pvt_mm.models.backbones import PVT, PVTv2
from pvt_mm.models.layers.shape import adaptive_avg_pool2d_matmul

FP32_TOL = 1e-4
EXPORT_SHAPE = (64, 64)
# H, W not divisible by 7 (nor by 32): the li pooling's bins, v1's pos-embed grids and v2's
# ceil-mode grids all differ from the traced ones
SIZES = [(2, 3, 67, 101), (1, 3, 100, 75)]
SMALL = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
MODELS = {
    # v1 sized for 64 px: traced at 64x64 its position embeddings need no resize, so only a
    # resize emitted while tracing lets the graph run at other sizes
    'v1': lambda: PVT(arch=SMALL, pretrain_img_size=64, drop_path_rate=0.),
    'v2-b0': lambda: PVTv2(arch='b0', drop_path_rate=0.),
    'v2-li': lambda: PVTv2(arch=dict(SMALL, linear=True), drop_path_rate=0.),
}


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """name -> (model, path of its exported graph); exported once per test module."""
    out = {}
    for name, make in MODELS.items():
        torch.manual_seed(0)
        model = make().eval()
        path = tmp_path_factory.mktemp('onnx') / f'{name}.onnx'
        export_onnx(model, path, EXPORT_SHAPE, names=backbone_output_names(model))
        out[name] = (model, path)
    return out


@pytest.mark.parametrize('name', list(MODELS))
def test_onnxruntime_matches_pytorch_at_other_sizes(exported, name):
    model, path = exported[name]
    runner = RuntimeModel(path, 'onnxruntime')
    for shape in SIZES:
        assert parity(model, runner, torch.randn(shape)) <= FP32_TOL, shape


@pytest.mark.parametrize('name', list(MODELS))
def test_graph_has_only_standard_ops_and_no_dropout(exported, name):
    ops = check_onnx_graph(exported[name][1])
    assert 'Dropout' not in ops
    assert 'MatMul' in ops and 'Softmax' in ops  # the reference attention, not oneDNN calls
    if name == 'v2-li':
        assert 'AveragePool' not in ops and 'GlobalAveragePool' not in ops  # no baked pool


def test_attention_dropout_is_not_exported(tmp_path):
    """The explicit attention path with attention dropout: eval mode exports no Dropout (it
    once exported a training-mode Dropout that OpenVINO refuses)."""
    model = PVTv2(arch=SMALL, attn_mode='explicit', attn_drop_rate=0.3, drop_rate=0.2).eval()
    path = tmp_path / 'drop.onnx'
    export_onnx(model, path, EXPORT_SHAPE)
    assert 'Dropout' not in check_onnx_graph(path)


def test_check_onnx_graph_rejects_nonstandard_ops(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    node = helper.make_node('_linear_pointwise', ['x'], ['y'], domain='mkldnn')
    graph = helper.make_graph([node], 'g', [helper.make_tensor_value_info(
        'x', TensorProto.FLOAT, [1])], [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17),
                                                    helper.make_opsetid('mkldnn', 1)])
    onnx.save(model, tmp_path / 'bad.onnx')
    with pytest.raises(ValueError, match='not a standard ONNX op'):
        check_onnx_graph(tmp_path / 'bad.onnx')


@pytest.mark.parametrize('hw', [(5, 7), (13, 29), (14, 14), (50, 33), (7, 8)])
def test_li_pooling_as_matmuls_equals_adaptive_avg_pool(hw):
    x = torch.randn(2, 3, *hw)
    ref = torch.nn.AdaptiveAvgPool2d(7)(x)
    torch.testing.assert_close(adaptive_avg_pool2d_matmul(x, 7), ref, rtol=0, atol=1e-6)


def test_openvino_matches_pytorch_fp32_and_bf16(exported):
    model, path = exported['v2-li']
    x = torch.randn(SIZES[0])
    assert parity(model, RuntimeModel(path, 'openvino', 'fp32'), x) <= FP32_TOL
    with torch.no_grad():
        ref = model(x)
    for o, r in zip(RuntimeModel(path, 'openvino', 'bf16')(x), ref):
        cos = F.cosine_similarity(torch.from_numpy(o).flatten(), r.flatten(), dim=0)
        assert cos >= 0.999  # the documented bf16 tolerance of the PyTorch bf16 path


def test_detector_export_matches_forward(tmp_path):
    """tools/export_onnx.py --config --checkpoint on the demo ATSS (PVTv2-b0): raw head outputs
    at two sizes other than the traced one equal ``model._forward`` in ONNX Runtime."""
    path = tmp_path / 'atss.onnx'
    wrapped = build_model_for_export('configs/demo/atss_pvtv2-b0_fpn_demo.py')
    ckpt = tmp_path / 'atss.pth'  # a Runner-style checkpoint of these random weights
    torch.save({'meta': {'epoch': 1}, 'state_dict': wrapped.model.state_dict()}, ckpt)
    cli = runpy.run_path('tools/export_onnx.py')
    cli['main'](['--config', 'configs/demo/atss_pvtv2-b0_fpn_demo.py', '--checkpoint',
                 str(ckpt), '--out', str(path), '--shape', '64', '96'])
    import onnx
    names = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
    assert names[0] == 'output0_level0' and len(names) == 9  # cls, box, centerness x 3 levels
    runner = RuntimeModel(path, 'onnxruntime')
    for shape in [(1, 3, 96, 128), (2, 3, 160, 64)]:
        assert parity(wrapped, runner, torch.randn(shape)) <= FP32_TOL, shape


def test_export_cli_arch_and_errors(tmp_path, capsys):
    cli = runpy.run_path('tools/export_onnx.py')
    path = tmp_path / 'b0.onnx'
    cli['main'](['--arch', 'pvt_v2_b0', '--out', str(path), '--shape', '64'])
    assert 'stage3' in capsys.readouterr().err
    x = np.random.default_rng(0).standard_normal((1, 3, 83, 70), dtype=np.float32)
    outs = RuntimeModel(path, 'onnxruntime')(x)
    assert [o.shape for o in outs] == [(1, 32, 21, 18), (1, 64, 11, 9), (1, 160, 6, 5),
                                       (1, 256, 3, 3)]
    with pytest.raises(SystemExit):
        cli['main'](['--arch', 'b9', '--out', str(path)])
    with pytest.raises(SystemExit):
        cli['main'](['--arch', 'b0', '--out', str(path), '--opset', '11'])


def test_benchmark_runtime_mode_end_to_end(capsys):
    cli = runpy.run_path('tools/benchmark.py')
    cli['main'](['--arch', 'b0', '--shape', '64', '--mode', 'fp32', 'bf16', '--runs', '1',
                 '--warmup', '0', '--peers', '--memory-modes', '--runtimes'])
    out = capsys.readouterr().out
    for label in ('onnxruntime b0', 'openvino b0'):
        assert label in out
    assert 'speedup vs onnxruntime' in out and 'speedup vs openvino' in out
    assert 'of the same-process fp32 matmul peak' in out
    assert 'of the same-process bf16 matmul peak' in out
    assert 'onnxruntime kernels: fp32' in out  # ORT runs fp32 when bf16 is asked
