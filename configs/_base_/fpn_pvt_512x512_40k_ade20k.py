# Semantic FPN + PVT, ADE20K 40k iterations: the official whai362/PVT segmentation recipe on
# mmseg 1.x. Family base: configs/fpn_<backbone>_512x512_40k_ade20k.py choose the backbone.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',  # 512x512 crops, 4 images per GPU
    'mmseg::_base_/schedules/schedule_40k.py',
    'mmseg::_base_/default_runtime.py',
]
custom_imports = dict(imports=['pvt_mm'], allow_failed_imports=False)

# Data: data/ade/ADEChallengeData2016/ (README "Data preparation"), or
# $PVT_MM_DATA_ROOT/ade/ADEChallengeData2016/ when that is set
data_root = '{{$PVT_MM_DATA_ROOT:data}}/ade/ADEChallengeData2016'
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader

crop_size = (512, 512)
data_preprocessor = dict(
    size=crop_size,
    # pad test images to a multiple of the largest stride (the official AlignResize role)
    test_cfg=dict(size_divisor=32))
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,  # the ResNet base sets one; PVT weights come from backbone.init_cfg
    backbone=dict(
        _delete_=True,
        type='PVT',
        arch='small',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_small.pth')),
    neck=dict(in_channels=[64, 128, 320, 512], out_channels=256, num_outs=4),
    decode_head=dict(channels=128, num_classes=150))

# Batch: 8 GPUs x 4 images per GPU = 32 images per iteration, 40k iterations (the official
# recipe: mmseg's 4-GPU 80k schedule run on 8 GPUs with lr x2 and half the iterations).
train_dataloader = dict(batch_size=4, dataset=dict(data_root=data_root))
auto_scale_lr = dict(enable=False, base_batch_size=32)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    clip_grad=None)
# poly decay to 0 (the ResNet schedule's eta_min=1e-4 is meant for SGD at lr 0.01)
param_scheduler = [
    dict(type='PolyLR', eta_min=0., power=0.9, begin=0, end=40000, by_epoch=False)
]
