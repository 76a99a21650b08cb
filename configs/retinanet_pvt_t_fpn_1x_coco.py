# RetinaNet with PVT-T. Recipe and comments: ./_base_/retinanet_pvt_fpn_1x_coco.py
_base_ = './_base_/retinanet_pvt_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        type='PVT',
        arch='tiny',
        init_cfg=dict(
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_tiny.pth')))
