# RetinaNet with PVTv2-b2. Recipe and comments: ./_base_/retinanet_pvt_fpn_1x_coco.py
_base_ = './_base_/retinanet_pvt_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        type='PVTv2',
        arch='b2',
        init_cfg=dict(
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b2.pth')))
