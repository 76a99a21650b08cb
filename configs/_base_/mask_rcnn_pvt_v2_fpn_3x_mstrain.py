# Mask R-CNN + PVTv2 + FPN, COCO 3x multi-scale: the official whai362/PVT
# mask_rcnn_pvt_v2_*_fpn_3x_mstrain recipe on mmdet 3.x (schedule, optimizer, augmentation:
# ./pvt_v2_3x_mstrain_schedule.py). Family base: the configs choose the backbone.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',  # 1333x800 test, 2 images per GPU
    './pvt_v2_3x_mstrain_schedule.py',
]
model = dict(
    backbone=dict(
        _delete_=True,
        type='PVTv2',
        arch='b2',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b2.pth')),
    neck=dict(in_channels=[64, 128, 320, 512], out_channels=256, num_outs=5))

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    {{_base_.ms_crop_resize}},
    dict(type='PackDetInputs')
]
# Data: data/coco/ (README "Data preparation"), or $PVT_MM_DATA_ROOT/coco/ when that is set
data_root = '{{$PVT_MM_DATA_ROOT:data}}/coco/'
train_dataloader = dict(dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
