# Semantic FPN with PVTv2-b5. Recipe and comments: ./_base_/fpn_pvt_512x512_40k_ade20k.py
_base_ = './_base_/fpn_pvt_512x512_40k_ade20k.py'
model = dict(
    backbone=dict(
        type='PVTv2',
        arch='b5',
        init_cfg=dict(
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b5.pth')))
