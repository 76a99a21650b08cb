# Mask R-CNN with PVTv2-b3. Recipe and comments: ./_base_/mask_rcnn_pvt_fpn_1x_coco.py
_base_ = './_base_/mask_rcnn_pvt_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        type='PVTv2',
        arch='b3',
        init_cfg=dict(
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b3.pth')))
