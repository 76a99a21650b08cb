# DETR with PVT-Small on its last map only (F4: stride 32, 512 channels): the official
# whai362/PVT detr_pvt_s_8x2_50ep_coco recipe on mmdet 3.x's DETR.
# Official: 100 queries, 6+6 transformer layers, multi-scale training (short side 640..800,
# step 32, long side <= 1333, no crop), images padded to a multiple of 32, AdamW lr 1e-4,
# wd 1e-4, backbone lr x0.1, gradient clipping max_norm 0.1, 50 epochs with one lr step at 33,
# no warm-up, 8 GPUs x 2 images.
# Deliberate differences: none in the recipe. mmdet 3.x's DETR maps the 512-channel map to 256
# with a ChannelMapper 1x1 conv, which is mmdet 2.x DETRHead's input_proj (same parameters).
_base_ = 'mmdet::detr/detr_r50_8xb2-150e_coco.py'
custom_imports = dict(imports=['pvt_mm'], allow_failed_imports=False)
model = dict(
    data_preprocessor=dict(pad_size_divisor=32),  # the official Pad(size_divisor=32)
    backbone=dict(
        _delete_=True,
        type='pvt_small_f4',  # the official class name: PVT(arch='small', F4=True)
        drop_path_rate=0.1,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_small.pth')),
    neck=dict(in_channels=[512]))

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomChoiceResize',
         scales=[(1333, 640), (1333, 672), (1333, 704), (1333, 736), (1333, 768),
                 (1333, 800)],
         keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
# Data: data/coco/ (README "Data preparation"), or $PVT_MM_DATA_ROOT/coco/ when that is set
data_root = '{{$PVT_MM_DATA_ROOT:data}}/coco/'
train_dataloader = dict(dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

max_epochs = 50
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[33],
         gamma=0.1)
]
auto_scale_lr = dict(base_batch_size=16)  # 8 GPUs x 2 images
