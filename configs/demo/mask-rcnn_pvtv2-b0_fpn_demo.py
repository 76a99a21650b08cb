# Mask R-CNN with a PVTv2-b0 backbone on the built-in demo data: random init, 128x128
# images, narrow FPN/heads and fewer proposals sized for CPUs. Boxes and masks are evaluated.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    './_base_/demo_coco_instance.py',
    './_base_/demo_det_runtime.py',
]
custom_imports = dict(imports=['pvt_mm'], allow_failed_imports=False)
neck_channels = 64
num_classes = 5
model = dict(
    backbone=dict(_delete_=True, type='PVTv2', arch='b0', drop_path_rate=0.0),
    neck=dict(in_channels=[32, 64, 160, 256], out_channels=neck_channels),
    rpn_head=dict(in_channels=neck_channels, feat_channels=neck_channels,
                  # objects are 14-56 px: 16 px anchors at stride 4 up to 64 px at stride 16
                  anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=neck_channels),
        bbox_head=dict(in_channels=neck_channels, fc_out_channels=256,
                       num_classes=num_classes),
        mask_roi_extractor=dict(out_channels=neck_channels),
        mask_head=dict(num_convs=2, in_channels=neck_channels,
                       conv_out_channels=neck_channels, num_classes=num_classes)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=200),
                   rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100), rcnn=dict(max_per_img=50)))

val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator
