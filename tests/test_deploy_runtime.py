"""The runtimes' side of deployment (pvt_mm_runtime.runtimes, re-exported by
pvt_mm.deploy.runtimes), apart from any exported model: OpenVINO's CPU plugin and the thread's
alternate signal stack; the metadata reader without the onnx package."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


ALTSTACK_CHECK = r'''
import ctypes, gc, signal, subprocess, sys
import numpy as np, torch
from pvt_mm.deploy.runtimes import RuntimeModel
signal.signal(signal.SIGCHLD, lambda *a: None)  # a Python handler, as torch's DataLoader sets
torch.onnx.export(torch.nn.Conv2d(3, 8, 3), torch.randn(1, 3, 16, 16), sys.argv[1], dynamo=False)
x = np.random.rand(1, 3, 16, 16).astype(np.float32)
first, second = RuntimeModel(sys.argv[1], 'openvino'), RuntimeModel(sys.argv[1], 'openvino')
first(x), second(x)
del first; gc.collect()
del second; gc.collect()


class Stack(ctypes.Structure):
    _fields_ = [('sp', ctypes.c_void_p), ('flags', ctypes.c_int), ('size', ctypes.c_size_t)]


stack = Stack()
assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack)) == 0
if not stack.flags & 2:  # SS_DISABLE: no alternate stack, nothing to check
    lo, hi = stack.sp, stack.sp + stack.size
    maps = [tuple(int(v, 16) for v in line.split()[0].split('-'))
            for line in open('/proc/self/maps')]
    assert any(a <= lo and hi <= b for a, b in maps), 'alternate signal stack is unmapped'
for _ in range(10):  # signals handled on that stack
    subprocess.run([sys.executable, '-S', '-c', 'pass'], check=True)
print('ok')
'''


def test_openvino_models_leave_a_valid_signal_stack(tmp_path):
    """OpenVINO's CPU plugin swaps the thread's alternate signal stack for one of its own and
    unmaps it when released; two plugins released in creation order left it pointing at
    unmapped memory, and the next signal (a child process exiting, with torch's DataLoader
    SIGCHLD handler installed) corrupted the heap: the suite died with SIGSEGV in an unrelated
    test. RuntimeModels share one Core (one plugin), so the stack stays valid. In a child
    process (a failure is a crash, and the parent keeps no plugin of it)."""
    proc = subprocess.run([sys.executable, '-c', ALTSTACK_CHECK, str(tmp_path / 'conv.onnx')],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), (
        proc.returncode, proc.stderr[-2000:])


def _model_with_metadata(path: Path, props: dict[str, str]) -> None:
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g',
                              [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor('w', TensorProto.FLOAT, [64],
                                                  [0.5] * 64)])  # bytes to skip past
    model = helper.make_model(graph, doc_string='d' * 300)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def test_metadata_reader_agrees_with_onnx(tmp_path):
    """pvt_mm_runtime reads ``metadata_props`` from the protobuf fields without the onnx
    package: the same entries as onnx.load, unicode included."""
    import onnx

    from pvt_mm_runtime.metadata import read_metadata, read_onnx_metadata_props
    props = {'pvt_mm.deploy': '{"task": "det", "classes": ["caf\\u00e9"]}', 'other': 'x' * 200}
    _model_with_metadata(tmp_path / 'm.onnx', props)
    loaded = {p.key: p.value for p in onnx.load(str(tmp_path / 'm.onnx')).metadata_props}
    assert read_onnx_metadata_props(tmp_path / 'm.onnx') == loaded == props
    assert read_metadata(tmp_path / 'm.onnx') == {'task': 'det', 'classes': ['caf\u00e9']}
    _model_with_metadata(tmp_path / 'none.onnx', {})
    with pytest.raises(ValueError, match='no pvt_mm.deploy metadata'):
        read_metadata(tmp_path / 'none.onnx')


def test_metadata_reader_refuses_malformed_files(tmp_path):
    """Truncated, empty or text files: one ValueError, never an IndexError or a hang."""
    from pvt_mm_runtime.metadata import read_onnx_metadata_props
    _model_with_metadata(tmp_path / 'm.onnx', {'pvt_mm.deploy': '{}'})
    data = (tmp_path / 'm.onnx').read_bytes()
    cases = {'truncated': data[:len(data) // 2], 'empty': b'', 'text': b'hello world\n',
             'varint': b'\x08' + b'\xff' * 20}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError):
            read_onnx_metadata_props(tmp_path / name)
