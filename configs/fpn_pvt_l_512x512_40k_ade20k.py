# Semantic FPN with PVT-L. Recipe and comments: ./_base_/fpn_pvt_512x512_40k_ade20k.py
_base_ = './_base_/fpn_pvt_512x512_40k_ade20k.py'
model = dict(
    backbone=dict(
        type='PVT',
        arch='large',
        # the official PVT v1 medium/large train without stochastic depth; to bring it in
        # later, add e.g. custom_hooks = [
        #     dict(type='DropPathWarmupHook', milestones=[(8000, 0.1)], by_epoch=False)]
        drop_path_rate=0.,
        init_cfg=dict(
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_large.pth')))
