# Semantic FPN with a PVTv2-b0 backbone for the built-in demo (tools/demo.py): random init,
# 128x128 images, background + 5 shape classes, a narrow neck/head sized for 2 CPU cores.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    './_base_/demo_ade_semantic.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_20k.py',
]
custom_imports = dict(imports=['pvt_mm'], allow_failed_imports=False)
neck_channels = 64
norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs CUDA
model = dict(
    data_preprocessor=dict(size={{_base_.crop_size}}),
    pretrained=None,
    backbone=dict(_delete_=True, type='PVTv2', arch='b0', drop_path_rate=0.0),
    neck=dict(in_channels=[32, 64, 160, 256], out_channels=neck_channels, num_outs=4),
    decode_head=dict(in_channels=[neck_channels] * 4, channels=neck_channels,
                     num_classes=6, norm_cfg=norm_cfg, dropout_ratio=0.0))

max_iters = 500  # mIoU 51.6 % (800: 64 %): iterations traded for the 10-minute demo
train_dataloader = dict(batch_size=8)
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
default_hooks = dict(logger=dict(interval=10),
                     checkpoint=dict(interval=max_iters))
log_processor = dict(window_size=10)
randomness = dict(seed=0)  # reproducible demo numbers
