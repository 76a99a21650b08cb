# Semantic FPN with PVTv2-b0. Recipe and comments: ./_base_/fpn_pvt_512x512_40k_ade20k.py
_base_ = './_base_/fpn_pvt_512x512_40k_ade20k.py'
model = dict(
    backbone=dict(
        type='PVTv2',
        arch='b0',
        init_cfg=dict(
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b0.pth')),
    neck=dict(in_channels=[32, 64, 160, 256]))
