# Cascade Mask R-CNN with PVTv2-b2, COCO 3x multi-scale.
# Recipe and comments: ./_base_/cascade_mask_rcnn_pvt_v2_fpn_3x_mstrain_fp16.py
_base_ = './_base_/cascade_mask_rcnn_pvt_v2_fpn_3x_mstrain_fp16.py'
model = dict(
    backbone=dict(
        type='PVTv2',
        arch='b2',
        init_cfg=dict(
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b2.pth')))
