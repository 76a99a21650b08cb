# RetinaNet with PVTv2-b1. Recipe and comments: ./_base_/retinanet_pvt_fpn_1x_coco.py
_base_ = './_base_/retinanet_pvt_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        type='PVTv2',
        arch='b1',
        init_cfg=dict(
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b1.pth')))
