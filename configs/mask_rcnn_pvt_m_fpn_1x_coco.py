# Mask R-CNN with PVT-M. Recipe and comments: ./_base_/mask_rcnn_pvt_fpn_1x_coco.py
_base_ = './_base_/mask_rcnn_pvt_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        type='PVT',
        arch='medium',
        # the official PVT v1 medium/large train without stochastic depth; to bring it in
        # later, add e.g. custom_hooks = [
        #     dict(type='DropPathWarmupHook', milestones=[(6, 0.1)])]
        drop_path_rate=0.,
        init_cfg=dict(
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_medium.pth')))
