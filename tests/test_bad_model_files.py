"""Bad deployed models, images, output folders and Hugging Face folders (issue 30, 4 / 8 / 9):
one line naming the file, found before any inference or large allocation. Where memory could
blow up the call runs in a subprocess with a time and an address-space cap."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from payloads import DEPLOY_META as META
from payloads import capped, onnx_model
from payloads import png as _png
from pvt_mm.loading.convert import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
GiB = 1 << 30


# ---- 8. .onnx files ------------------------------------------------------------------------
def _truncated(tmp_path: Path) -> Path:
    data = onnx_model(tmp_path / 'full.onnx').read_bytes()
    (tmp_path / 'm.onnx').write_bytes(data[:len(data) // 2])
    return tmp_path / 'm.onnx'


BAD_MODELS = {
    'metadata without task': (lambda p: onnx_model(p / 'm.onnx', {'classes': ['a']}),
                              r'metadata has task None'),
    'a list as task': (lambda p: onnx_model(p / 'm.onnx', {**META, 'task': ['det']}),
                       r"metadata has task \['det'\]"),
    'a list as metadata': (lambda p: onnx_model(p / 'm.onnx', [1, 2]), 'is a list, not a JSON'),
    'nested metadata': (lambda p: onnx_model(p / 'm.onnx', '[' * 100000 + ']' * 100000),
                        'nested too deeply'),
    'a text file': (lambda p: (p / 'm.onnx').write_text('not a model\n' * 20) and p / 'm.onnx',
                    r'm\.onnx (is not a valid ONNX model file|has no pvt_mm\.deploy metadata)'),
    'a truncated file': (_truncated, r'is not a valid ONNX model file'),
    'an empty file': (lambda p: (p / 'm.onnx').write_bytes(b'') or p / 'm.onnx', 'is empty'),
    'a custom-op domain': (lambda p: onnx_model(p / 'm.onnx', domain='evil.ops'),
                           "custom domain 'evil.ops'"),
    'external data outside the folder': (
        lambda p: onnx_model(p / 'm.onnx', external='../../etc/passwd'),
        "keeps tensor data in '../../etc/passwd', outside its folder"),
    'absolute external data': (lambda p: onnx_model(p / 'm.onnx', external='/etc/passwd'),
                               "keeps tensor data in '/etc/passwd'"),
    'a negative resize': (
        lambda p: onnx_model(p / 'm.onnx', {**META, 'test_resize': {'scale': [-5, 10],
                                                                    'keep_ratio': False}}),
        r'has test_resize .*expected \{"scale": \[w, h\] in 1..8192'),
    'a 40000 px resize': (
        lambda p: onnx_model(p / 'm.onnx', {**META, 'test_resize': {'scale': [40000, 40000],
                                                                    'keep_ratio': True}}),
        r'has test_resize'),
    'a palette of strings': (lambda p: onnx_model(p / 'm.onnx', {**META, 'palette': ['red']}),
                             'has palette'),
}


@pytest.mark.parametrize('case', sorted(BAD_MODELS))
def test_bad_onnx_is_one_line(case, tmp_path):
    from pvt_mm_runtime import load_predictor
    make, pattern = BAD_MODELS[case]
    path = make(tmp_path)
    with pytest.raises(ValueError, match=pattern) as info:
        load_predictor(path)
    assert str(path) in str(info.value) and '\n' not in str(info.value)


def test_a_good_model_loads(tmp_path):
    from pvt_mm_runtime import load_predictor
    assert load_predictor(onnx_model(tmp_path / 'ok.onnx')).classes == ['a', 'b']


def test_tools_print_one_line_for_a_bad_onnx(tmp_path):
    """tools/infer.py and tools/test.py: exit 1, one line naming the file (no traceback)."""
    path = onnx_model(tmp_path / 'm.onnx', {**META, 'task': ['det']})
    image = _png(tmp_path / 'a.png', 8, 8)
    for tool in (['tools/infer.py', image, path, '--out-dir', tmp_path / 'out'],
                 ['tools/test.py', 'configs/demo/atss_pvtv2-b0_fpn_demo.py', path]):
        proc = capped(tool)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert 'Traceback' not in proc.stderr and str(path) in proc.stderr, proc.stderr[-2000:]


# ---- 8. images and --out-dir ---------------------------------------------------------------
READ = ('import sys\nfrom pvt_mm_runtime.predictor import read_image\n'
        'try:\n    read_image(sys.argv[1])\n    print("DECODED")\n'
        'except ValueError as e:\n    print("ValueError", e)\n')


def test_huge_images_are_refused_from_their_header(tmp_path):
    big = _png(tmp_path / 'big.png', 16000, 16000)
    huge = _png(tmp_path / 'huge.png', 100000, 100000, pixels=False)
    for path, size in ((big, '256000000 pixels'), (huge, '10000000000 pixels')):
        proc = capped(['-c', READ, path], memory=2 * GiB, timeout=120)
        assert proc.stdout.startswith(f'ValueError {path}'), proc.stdout + proc.stderr[-1500:]
        assert size in proc.stdout


def test_out_dir_and_unreadable_images_stop_before_any_work(tmp_path):
    import infer  # tools/infer.py
    good = _png(tmp_path / 'imgs' / 'a.png', 8, 8) if (tmp_path / 'imgs').mkdir() is None \
        else None
    (tmp_path / 'imgs' / 'b.jpg').write_text('not an image')
    (tmp_path / 'imgs' / 'c.png').write_bytes(b'')
    (tmp_path / 'file').write_text('x')
    model = tmp_path / 'never_read.onnx'  # checks come first: the model is never opened
    with pytest.raises(SystemExit, match=r'--out-dir .*file exists and is not a folder'):
        infer.main([str(good), str(model), '--out-dir', str(tmp_path / 'file')])
    with pytest.raises(SystemExit, match=r'2 images cannot be read \(nothing was run\): .*b\.jpg'
                                         r'.*c\.png'):
        infer.main([str(tmp_path / 'imgs'), str(model), '--out-dir', str(tmp_path / 'out')])


# ---- 9. Hugging Face folders, and 4. config.json that drives allocation ----------------------
@pytest.fixture
def folder(tmp_path) -> Path:
    from pvt_mm.loading.hf_folder import write_transformers_folder
    from pvt_mm.models.backbones import ARCHS, PVTv2
    out, _, _ = write_transformers_folder(PVTv2(arch='b0').state_dict(), tmp_path / 'hf',
                                          ARCHS['b0'])
    return out


def _edit(folder: Path, text: str | None = None, **fields) -> Path:
    config = json.loads((folder / 'config.json').read_text())
    (folder / 'config.json').write_text(text if text is not None
                                        else json.dumps({**config, **fields}))
    return folder


CONFIGS = {
    'nested': (dict(text='{"a": ' * 50000 + '1' + '}' * 50000), 'nested too deeply'),
    '5000-digit int': (dict(text='{"model_type": "pvt_v2", "depths": ' + '9' * 5000 + '}'),
                       'is not a readable config.json'),
    'string hidden sizes': (dict(hidden_sizes='abc'), 'hidden_sizes must list 4 integers'),
    'a string depth': (dict(depths=[2, 2, 2, '2']), 'depths must list 4 integers'),
    'null mlp ratios': (dict(mlp_ratios=None), 'mlp_ratios must list 4 numbers'),
    'a list model_type': (dict(model_type=['pvt_v2']), 'is not transformers\' PVT'),
    'huge hidden sizes': (dict(hidden_sizes=[32768] * 4, depths=[64] * 4),
                          r'hidden_sizes must list 4 integers in 1..8192'),
}


@pytest.mark.parametrize('case', sorted(CONFIGS))
def test_bad_config_json_is_named(case, folder):
    from pvt_mm.loading.hf_folder import arch_from_config, read_hf_config
    edit, pattern = CONFIGS[case]
    _edit(folder, **edit)
    with pytest.raises(CheckpointError, match=pattern) as info:
        arch_from_config(read_hf_config(folder), str(folder / 'config.json'))
    assert 'config.json' in str(info.value)


def test_converter_compares_config_and_weights_before_building(folder, tmp_path):
    """A config.json naming a huge variant within the bounds never sizes an allocation (4 GiB
    cap, a subprocess); one naming another table variant is refused from the weights' shapes
    before it is built."""
    import convert_checkpoint  # tools/convert_checkpoint.py
    _edit(folder, hidden_sizes=[4096] * 4, depths=[64] * 4, num_attention_heads=[1] * 4)
    proc = capped(['tools/convert_checkpoint.py', '--to', 'transformers', folder,
                   tmp_path / 'out'], timeout=300)
    assert proc.returncode == 1 and 'does not match PVTv2' in proc.stderr, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    _edit(folder, hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 18, 3])
    with pytest.raises(CheckpointError, match=r'does not match PVTv2 \(b3\)|does not match PVTv2'):
        convert_checkpoint.main(['--to', 'transformers', str(folder), str(tmp_path / 'out2')])


def test_weights_link_to_a_system_file_shows_no_bytes(folder, tmp_path):
    from pvt_mm.loading.checkpoint import folder_weights, read_checkpoint
    secret = tmp_path / 'secret.txt'
    secret.write_text('daemon:x:1:1:SECRET-CONTENT\n')
    (folder / 'model.safetensors').unlink()
    (folder / 'model.safetensors').symlink_to(secret)
    with pytest.raises(CheckpointError, match='a text file') as info:
        read_checkpoint(folder_weights(folder))
    assert 'SECRET' not in str(info.value) and 'daemon' not in str(info.value)


def test_both_weights_files_say_which_is_read(folder, monkeypatch):
    import torch

    import pvt_mm.loading.checkpoint as checkpoint
    said = []
    monkeypatch.setattr(checkpoint, 'print_log', lambda msg, **kw: said.append(msg))
    torch.save({'other': torch.zeros(1)}, folder / 'pytorch_model.bin')
    assert checkpoint.folder_weights(folder).name == 'model.safetensors'
    assert any('holds both model.safetensors and pytorch_model.bin: reading model.safetensors'
               in msg for msg in said), said
