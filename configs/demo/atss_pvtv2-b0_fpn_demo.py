# ATSS with a PVTv2-b0 backbone for the built-in demo (tools/demo.py): random init (nothing
# is downloaded), 128x128 images, a narrow FPN/head with GroupNorm sized for 2 CPU cores.
_base_ = [
    './_base_/demo_coco_instance.py',
    './_base_/demo_det_runtime.py',
]
custom_imports = dict(imports=['pvt_mm'], allow_failed_imports=False)
neck_channels = 64
model = dict(
    type='ATSS',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32),
    backbone=dict(type='PVTv2', arch='b0', drop_path_rate=0.0),
    neck=dict(type='FPN', in_channels=[32, 64, 160, 256], out_channels=neck_channels,
              start_level=1, add_extra_convs='on_output', num_outs=3),
    bbox_head=dict(
        type='ATSSHead',
        num_classes=5,
        in_channels=neck_channels,
        stacked_convs=2,
        feat_channels=neck_channels,
        norm_cfg=dict(type='GN', num_groups=16, requires_grad=True),
        # one square anchor per location, 4x the stride (32/64/128 px): ATSS picks positives
        # among the anchors nearest each object, so small objects still get some
        anchor_generator=dict(type='AnchorGenerator', ratios=[1.0], octave_base_scale=4,
                              scales_per_octave=1, strides=[8, 16, 32]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                        target_stds=[0.1, 0.1, 0.2, 0.2]),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                      loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    train_cfg=dict(assigner=dict(type='ATSSAssigner', topk=9), allowed_border=-1,
                   pos_weight=-1, debug=False),
    test_cfg=dict(nms_pre=300, min_bbox_size=0, score_thr=0.05,
                  nms=dict(type='nms', iou_threshold=0.6), max_per_img=50))
