# Mask R-CNN with PVTv2-b2-li, COCO 3x multi-scale.
# Recipe and comments: ./_base_/mask_rcnn_pvt_v2_fpn_3x_mstrain.py
_base_ = './_base_/mask_rcnn_pvt_v2_fpn_3x_mstrain.py'
model = dict(
    backbone=dict(
        type='PVTv2',
        arch='b2_li',
        init_cfg=dict(
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b2_li.pth')))
# the official b2-li config (unlike the b2 one, and despite its name) trains under apex O1
# mixed precision (EpochBasedRunnerAmp, use_fp16=True): mmengine's AmpOptimWrapper here
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')
find_unused_parameters = True  # as the official b2-li config
