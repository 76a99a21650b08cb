# ATSS + PVTv2 + FPN, COCO 3x multi-scale, mixed precision: the official whai362/PVT
# atss_pvt_v2_*_fpn_3x_mstrain_fp16 recipe on mmdet 3.x. Family base (also of the GFL one).
# The model is mmdet's ATSS (mmdet ships it only as a whole 1x config, not as a model base).
_base_ = [
    'mmdet::_base_/datasets/coco_detection.py',  # 1333x800 test, 2 images per GPU
    './pvt_v2_3x_mstrain_schedule.py',
]
model = dict(
    type='ATSS',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32),
    backbone=dict(
        type='PVTv2',
        arch='b2',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b2.pth')),
    neck=dict(
        type='FPN',
        in_channels=[64, 128, 320, 512],
        out_channels=256,
        start_level=1,
        add_extra_convs='on_output',
        num_outs=5),
    bbox_head=dict(
        type='ATSSHead',
        num_classes=80,
        in_channels=256,
        stacked_convs=4,
        feat_channels=256,
        anchor_generator=dict(type='AnchorGenerator', ratios=[1.0], octave_base_scale=8,
                              scales_per_octave=1, strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                        target_stds=[0.1, 0.1, 0.2, 0.2]),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                      loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    train_cfg=dict(assigner=dict(type='ATSSAssigner', topk=9), allowed_border=-1,
                   pos_weight=-1, debug=False),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                  nms=dict(type='nms', iou_threshold=0.6), max_per_img=100))

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
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

# "fp16": the official configs train under apex O1 (dynamic loss scale); mmengine's
# AmpOptimWrapper is the mmdet 3.x equivalent (pvt_mm's tools run it as bfloat16 autocast on CPU)
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')
find_unused_parameters = True  # as the official configs
