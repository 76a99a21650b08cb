# Sparse R-CNN with PVTv2-b2-li, 300 proposals, COCO 3x multi-scale with crops.
# Recipe and comments: ./_base_/sparse_rcnn_pvt_v2_fpn_300_proposals_crop_mstrain_480-800_3x_coco.py
_base_ = './_base_/sparse_rcnn_pvt_v2_fpn_300_proposals_crop_mstrain_480-800_3x_coco.py'
model = dict(
    backbone=dict(
        type='PVTv2',
        arch='b2_li',
        init_cfg=dict(
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b2_li.pth')))
