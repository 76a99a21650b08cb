"""Every bad input of the table "Bad input and what you see" (docs/errors.md): one row
each, with the error type and the message the user gets (each row fails if its check is
removed: the fallback errors are other types or messages). Rows are raised at construction,
config build or the top of ``forward``, before any data is loaded."""
from __future__ import annotations

import re
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from helpers import official_state_dict
from payloads import (flip_inside_a_tensor_record, forged_object_array, legacy_pickle,
                      onnx_model, png, zip_bomb)

from pvt_mm import CheckpointError
from pvt_mm.loading.checkpoint import read_checkpoint, write_checkpoint
from pvt_mm.engine import cli
from pvt_mm.engine.checkpoint_io import check_model_checkpoint
from pvt_mm.engine.config_check import check_model_config
from pvt_mm.engine.runtime import load_config
from pvt_mm.models.backbones import PVT, PVTv2
from pvt_mm.visualization.inference import collect_images

pytestmark = pytest.mark.fast  # `pytest -m fast`: the model-code subset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
ATSS = str(ROOT / 'configs' / 'demo' / 'atss_pvtv2-b0_fpn_demo.py')
SEG = str(ROOT / 'configs' / 'demo' / 'fpn_pvtv2-b0_demo-seg.py')
ERRORS_PAGE = ROOT / 'docs' / 'errors.md'  # the table of bad inputs (linked from the README)
ERRORS_SECTION = '## Bad input and what you see'
B0 = dict(arch='b0', drop_path_rate=0.)


@lru_cache(maxsize=None)
def _b0() -> PVTv2:
    return PVTv2(**B0).eval()


def _forward(x: torch.Tensor):
    with torch.no_grad():
        return _b0()(x)


def _in_channels_1_with_2_channel_checkpoint(tmp_path: Path) -> None:
    sd = official_state_dict('b0')
    sd['patch_embed1.proj.weight'] = sd['patch_embed1.proj.weight'][:, :2]
    torch.save(sd, tmp_path / 'two_channel.pth')
    PVTv2(in_channels=1, init_cfg=dict(type='Pretrained', checkpoint=str(
        tmp_path / 'two_channel.pth')), **B0).init_weights()


def _seg_head_mismatch(tmp_path: Path) -> None:
    check_model_config(dict(model=dict(
        type='EncoderDecoder', backbone=dict(type='PVTv2', arch='b0'),
        decode_head=dict(type='UPerHead', in_channels=[64, 128, 320, 512], in_index=[0, 1, 2, 3]),
        auxiliary_head=dict(type='FCNHead', in_channels=320, in_index=2))))


def _missing_dataset(tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('PVT_MM_DEMO_DATA', str(tmp_path / 'no_data'))
        cli.train_config(cli.parse_train_args([ATSS, '--work-dir', str(tmp_path / 'w')]))


def _missing_seg_dataset(tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('PVT_MM_DEMO_DATA', str(tmp_path / 'no_data'))
        cli.train_config(cli.parse_train_args([SEG, '--work-dir', str(tmp_path / 'w')]))


def _forged_numpy_object(tmp_path: Path) -> None:
    path = tmp_path / 'forged.pth'  # without the set(): nothing dereferences it while loading
    torch.save({'meta': {'seed': forged_object_array(0, wrap_in_set=False)}}, path)
    read_checkpoint(path)


def _flipped_byte_in_pth(tmp_path: Path) -> None:
    torch.save({'state_dict': {'w': torch.arange(4096.)}}, tmp_path / 'good.pth')
    flip_inside_a_tensor_record(tmp_path / 'good.pth', tmp_path / 'epoch_1.pth')
    read_checkpoint(tmp_path / 'epoch_1.pth')


def _flipped_byte_in_safetensors(tmp_path: Path) -> None:
    path = write_checkpoint({'w': torch.arange(4096.)}, tmp_path / 'b0.safetensors')
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    read_checkpoint(path)


def _published_name_mismatch(tmp_path: Path) -> None:
    torch.save({'state_dict': {'w': torch.zeros(2)}}, tmp_path / 'atss_demo-0123abcd.pth')
    read_checkpoint(tmp_path / 'atss_demo-0123abcd.pth')


def _checkpoint_of_another_model(tmp_path: Path) -> None:
    """What tools/infer.py's inferencer checks before the weights go in."""
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    model = MODELS.build(load_config(ATSS, None, str(tmp_path / 'w')).model)
    b1 = {f'backbone.{k}': v for k, v in PVTv2(arch='b1').state_dict().items()}
    check_model_checkpoint(model, {'state_dict': b1}, 'b1.pth')


def _text_file_named_jpg(tmp_path: Path) -> None:
    (tmp_path / 'photo.jpg').write_text('not an image\n')
    collect_images(tmp_path / 'photo.jpg')


def _zip_bomb(tmp_path: Path) -> None:
    torch.save({'w': torch.ones(2)}, tmp_path / 'base.pth')
    read_checkpoint(zip_bomb(tmp_path / 'base.pth', tmp_path / 'bomb.pth', 100, record_mib=1))


def _meta_tensor_in_a_checkpoint(tmp_path: Path) -> None:
    model = PVTv2(arch='b0')
    sd = dict(model.state_dict(), **{'stages.0.norm.weight': torch.empty(32, device='meta')})
    check_model_checkpoint(model, {'state_dict': sd}, 'ckpt.pth', strict=False)


def _declared_sizes_beyond_the_file(tmp_path: Path) -> None:
    read_checkpoint(legacy_pickle(tmp_path / 'old.pth', declared=1 << 38))


def _legacy_storage_missing(tmp_path: Path) -> None:
    read_checkpoint(legacy_pickle(tmp_path / 'old.pth', keys=[]))


def _config_json(tmp_path: Path, text: str) -> None:
    from pvt_mm.loading.hf_folder import arch_from_config, read_hf_config
    (tmp_path / 'config.json').write_text(text)
    arch_from_config(read_hf_config(tmp_path), 'hf/config.json')


def _onnx(tmp_path: Path, **kwargs) -> None:
    from pvt_mm_runtime import load_predictor
    load_predictor(onnx_model(tmp_path / 'model.onnx', **kwargs))


def _huge_image(tmp_path: Path) -> None:
    from pvt_mm_runtime.checks import check_image_file
    check_image_file(png(tmp_path / 'scan.png', 100000, 100000, pixels=False))


def _out_dir_is_a_file(tmp_path: Path) -> None:
    from pvt_mm_runtime.checks import check_out_dir
    (tmp_path / 'out').write_text('')
    check_out_dir(tmp_path / 'out')


def _folder_with_unreadable_images(tmp_path: Path) -> None:
    import infer  # tools/infer.py
    png(tmp_path / 'a.png', 8, 8)
    (tmp_path / 'b.jpg').write_text('not an image')
    infer.check_inputs(str(tmp_path), str(tmp_path / 'out'))


def _cfg(**options):
    return lambda tmp_path: load_config(ATSS, options, str(tmp_path / 'w'))


# id, call(tmp_path), expected error, message pattern
ROWS = [
    # ---- construction ---------------------------------------------------------------------
    ('unknown arch', lambda _: PVT(arch='smal'), ValueError,
     r"unknown PVT arch 'smal'; choose one of \[.*'small', 'tiny'\] or pass a dict"),
    ('arch of the other version', lambda _: PVT(arch='b2'), ValueError,
     r"unknown PVT arch 'b2' \('b2' is a PVTv2 arch: type='PVTv2'\); choose one of"),
    ('custom arch missing depths', lambda _: PVTv2(arch=dict(embed_dims=(64, 128, 320, 512))),
     ValueError, r"custom arch is missing \['depths'\]"),
    ('custom arch, dims not divisible by heads',
     lambda _: PVTv2(arch=dict(embed_dims=(64, 128, 320, 500), depths=(1, 1, 1, 1))),
     ValueError, 'embed dim 500 is not divisible by its 8 heads'),
    ('frozen_stages=2.5', lambda _: PVTv2(frozen_stages=2.5, **B0), TypeError,
     r'frozen_stages must be an integer in \[-1, 4\], got 2.5 \(float\)'),
    ('frozen_stages=True', lambda _: PVTv2(frozen_stages=True, **B0), TypeError,
     r'frozen_stages must be an integer in \[-1, 4\], got True \(bool\)'),
    ('frozen_stages=5', lambda _: PVTv2(frozen_stages=5, **B0), ValueError,
     r'frozen_stages must be an integer in \[-1, 4\], got 5'),
    ('out_indices=(1.0,)', lambda _: PVTv2(out_indices=(1.0,), **B0), TypeError,
     r'out_indices must be a sequence of integer stage indices in 0..3, got \(1.0,\)'),
    ('out_indices=(0, 4)', lambda _: PVTv2(out_indices=(0, 4), **B0), ValueError,
     'out_indices entry 4 is outside 0..3'),
    ('out_indices=(3, 1)', lambda _: PVTv2(out_indices=(3, 1), **B0), ValueError,
     r'out_indices must list stages in increasing order \(the maps are returned from stage 1 '
     r'to 4\), got \(3, 1\): use \(1, 3\)'),
    ('attn_drop_rate=-0.1', lambda _: PVTv2(attn_drop_rate=-0.1, **B0), ValueError,
     r'attn_drop_rate must be in \[0, 1\), got -0.1'),
    ('drop_rate=1.0', lambda _: PVTv2(drop_rate=1.0, **B0), ValueError,
     r'drop_rate must be in \[0, 1\), got 1.0'),
    ('drop_path_rate=1.5', lambda _: PVTv2(arch='b0', drop_path_rate=1.5), ValueError,
     r'drop_path_rate must be in \[0, 1\), got 1.5'),
    ('in_channels=0', lambda _: PVTv2(in_channels=0, **B0), ValueError,
     'in_channels must be an integer >= 1, got 0'),
    ('pretrain_img_size=16', lambda _: PVT(arch='tiny', pretrain_img_size=16), ValueError,
     'pretrain_img_size 16 is too small: H and W must be at least 32'),
    ('pretrain_img_size=(224, 224, 224)',
     lambda _: PVT(arch='tiny', pretrain_img_size=(224, 224, 224)), TypeError,
     r'pretrain_img_size must be an int or an \(H, W\) pair of ints'),
    ('pretrained=123', lambda _: PVTv2(pretrained=123, **B0), TypeError,
     r'pretrained must be a checkpoint path or URL \(str\) or None, got 123'),
    ('Pretrained init_cfg without checkpoint',
     lambda _: PVTv2(init_cfg=dict(type='Pretrained'), **B0), ValueError,
     r"init_cfg \{'type': 'Pretrained'\} needs checkpoint='<path or URL>'"),
    ('init_cfg=123', lambda _: PVTv2(init_cfg=123, **B0), TypeError,
     'init_cfg must be a dict, a list of dicts or None, got 123'),
    # ---- forward ----------------------------------------------------------------------------
    ('not a tensor', lambda _: _forward([[1.0]]), TypeError, r'PVTv2 \(b0\) expects a tensor'),
    ('rank 3', lambda _: _forward(torch.randn(3, 64, 64)), ValueError,
     r'expects a \(B, C, H, W\) batch, got shape \(3, 64, 64\)'),
    ('empty batch', lambda _: _forward(torch.randn(0, 3, 64, 64)), ValueError,
     r'got an empty batch \(shape \(0, 3, 64, 64\)\): the batch size must be at least 1'),
    ('wrong channel count', lambda _: _forward(torch.randn(1, 1, 64, 64)), ValueError,
     r'expects 3 input channels, got 1'),
    ('integer dtype', lambda _: _forward(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)),
     TypeError, 'expects a floating-point image, got torch.uint8'),
    ('float64 input, float32 model',
     lambda _: _forward(torch.randn(1, 3, 64, 64, dtype=torch.float64)), TypeError,
     'got a torch.float64 input but its parameters are torch.float32'),
    ('float16 input without autocast',
     lambda _: _forward(torch.randn(1, 3, 64, 64).half()), TypeError,
     'got a torch.float16 input but its parameters are torch.float32'),
    ('bfloat16 input without autocast',
     lambda _: _forward(torch.randn(1, 3, 64, 64).bfloat16()), TypeError,
     'got a torch.bfloat16 input but its parameters are torch.float32'),
    ('image too small (v2: 28 px)', lambda _: _forward(torch.randn(1, 3, 28, 64)), ValueError,
     r'input 28x64 is too small for PVTv2 \(b0\): H and W must be at least 29'),
    ('image too small (v1: 31 px)',
     lambda _: PVT(arch='tiny').eval()(torch.randn(1, 3, 64, 31)), ValueError,
     r'input 64x31 is too small for PVT \(tiny\): H and W must be at least 32'),
    # ---- loading ----------------------------------------------------------------------------
    ('in_channels=1, 2-channel checkpoint', _in_channels_1_with_2_channel_checkpoint,
     CheckpointError, r'stages\.0\.patch_embed\.proj\.weight: checkpoint \(32, 2, 7, 7\)'),
    ('forged numpy object', _forged_numpy_object, CheckpointError,
     r'forged\.pth .*refused numpy dtype'),
    ('flipped byte in a .pth', _flipped_byte_in_pth, CheckpointError,
     r"epoch_1\.pth is damaged: record '.*/data/0' does not match its stored CRC-32"),
    ('flipped byte in a .safetensors', _flipped_byte_in_safetensors, CheckpointError,
     r'b0\.safetensors is damaged: its tensor data hashes to'),
    ('published name whose hash does not match', _published_name_mismatch, CheckpointError,
     r'atss_demo-0123abcd\.pth is damaged or renamed'),
    ('checkpoint of another model', _checkpoint_of_another_model, CheckpointError,
     r'b1\.pth does not match the model \(ATSS, backbone PVTv2 \(b0\)\)'),
    ('text file named .jpg', _text_file_named_jpg, ValueError,
     r'photo\.jpg is not a readable image \(OpenCV knows no format'),
    ('zip bomb: a compressed record listed many times', _zip_bomb, CheckpointError,
     r"bomb\.pth is not a checkpoint torch\.save writes: 100 compressed record\(s\)"),
    ('a meta / sparse / quantized tensor in a checkpoint', _meta_tensor_in_a_checkpoint,
     CheckpointError, r'ckpt\.pth: stages\.0\.norm\.weight is a meta tensor'),
    ('tensor sizes larger than the file', _declared_sizes_beyond_the_file, CheckpointError,
     r'old\.pth is not a loadable PyTorch checkpoint \(a pickle of \d+ bytes\): it declares '
     r'tensors of 1099511627776 bytes'),
    ('legacy pickle whose storage is missing', _legacy_storage_missing, CheckpointError,
     r"storage '0' of this legacy checkpoint has no data in the file"),
    ('config.json: wrong types', lambda p: _config_json(
        p, '{"model_type": "pvt_v2", "hidden_sizes": "abc"}'), CheckpointError,
     r'hf/config\.json: hidden_sizes must list 4 integers in 1\.\.8192'),
    ('config.json nested too deeply', lambda p: _config_json(p, '[' * 10 ** 5 + ']' * 10 ** 5),
     CheckpointError, r'config\.json is not a PVT config\.json: its JSON is nested too deeply'),
    ('.onnx metadata without task', lambda p: _onnx(p, meta={'classes': ['a']}), ValueError,
     r'model\.onnx: its pvt_mm\.deploy metadata has task None'),
    ('.onnx with a custom-op domain', lambda p: _onnx(p, domain='my.ops'), ValueError,
     r"model\.onnx uses operators of the custom domain 'my\.ops'"),
    ('image larger than 8192 x 8192', _huge_image, ValueError,
     r'scan\.png is too large an image to decode \(its header: image size \(10000000000 '
     r'pixels\)'),
    ('--out-dir naming a file', _out_dir_is_a_file, ValueError,
     r'--out-dir .*out exists and is not a folder'),
    ('a folder with an unreadable image', _folder_with_unreadable_images, ValueError,
     r'b\.jpg is not a readable image'),
    # ---- config (tools/train.py, tools/test.py) -------------------------------------------
    ('neck in_channels != backbone out_channels',
     _cfg(**{'model.neck.in_channels': [64, 128, 320, 512]}), ValueError,
     r"model.neck \(FPN\) in_channels \[64, 128, 320, 512\] do not match the backbone's "
     r"out_channels \[32, 64, 160, 256\] \(PVTv2 arch 'b0', out_indices \(0, 1, 2, 3\)\)"),
    ('out_indices=(1, 2, 3) with a 4-input FPN',
     _cfg(**{'model.backbone.out_indices': (1, 2, 3)}), ValueError,
     r"in_channels \[32, 64, 160, 256\] do not match the backbone's out_channels "
     r'\[64, 160, 256\]'),
    ('bad backbone argument in a config', _cfg(**{'model.backbone.frozen_stages': 2.5}),
     TypeError, r'frozen_stages must be an integer'),
    ('mmseg head in_channels != backbone', _seg_head_mismatch, ValueError,
     r'model.decode_head \(UPerHead\) in_channels \[64, 128, 320, 512\] with in_index '
     r"\[0, 1, 2, 3\] do not match the backbone's out_channels \[32, 64, 160, 256\]"),
    ('dataset missing', _missing_dataset, FileNotFoundError,
     r"train_dataloader: the dataset's annotation file .*no_data/coco/annotations/"
     r'instances_train.json does not exist .*see README.md#data-preparation'),
    ('ADE20K-style dataset missing (no ann_file)', _missing_seg_dataset, FileNotFoundError,
     r"train_dataloader: the dataset's img_path folder .*no_data/ade/images/training does "
     r"not exist \(data_root='.*no_data/ade/', data_prefix='images/training'\)"),
]


@pytest.mark.parametrize('call, error, match', [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_row(call, error, match, tmp_path):
    with pytest.raises(error, match=match):
        call(tmp_path)


def test_accepted_dtypes():
    """The dtype rule is not stricter than it must be: the parameters' dtype, and fp32 /
    fp16 / bf16 input under autocast, run."""
    x = torch.randn(1, 3, 32, 32)
    tiny = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
    model = PVTv2(arch=tiny, drop_path_rate=0.).eval()
    with torch.no_grad():
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            with torch.autocast('cpu', dtype=torch.bfloat16):
                assert model(x.to(dtype))[0].shape == (1, 16, 8, 8)
        for dtype in (torch.bfloat16, torch.float64):
            assert model.to(dtype)(x.to(dtype))[-1].dtype == dtype


def test_errors_page_table_has_every_row():
    """docs/errors.md's table lists the same number of bad inputs as ROWS."""
    text = ERRORS_PAGE.read_text()
    assert ERRORS_SECTION in text
    section = text.split(ERRORS_SECTION, 1)[1].split('\n## ', 1)[0]
    rows = [ln for ln in section.splitlines() if re.match(r'\|\s*[^-\s|]', ln)][1:]  # no header
    assert len(rows) == len(ROWS), (len(rows), len(ROWS))
