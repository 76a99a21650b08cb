# Semantic FPN with PVT-S. Recipe and comments: ./_base_/fpn_pvt_512x512_40k_ade20k.py
_base_ = './_base_/fpn_pvt_512x512_40k_ade20k.py'
model = dict(
    backbone=dict(
        type='PVT',
        arch='small',
        init_cfg=dict(
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_small.pth')))
