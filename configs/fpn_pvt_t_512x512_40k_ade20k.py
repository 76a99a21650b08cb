# Semantic FPN with PVT-T. Recipe and comments: ./_base_/fpn_pvt_512x512_40k_ade20k.py
_base_ = './_base_/fpn_pvt_512x512_40k_ade20k.py'
model = dict(
    backbone=dict(
        type='PVT',
        arch='tiny',
        init_cfg=dict(
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_tiny.pth')))
