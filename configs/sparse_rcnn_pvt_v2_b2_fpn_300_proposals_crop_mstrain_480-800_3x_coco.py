# Sparse R-CNN with PVTv2-b2, 300 proposals, COCO 3x multi-scale with crops.
# Recipe and comments: ./_base_/sparse_rcnn_pvt_v2_fpn_300_proposals_crop_mstrain_480-800_3x_coco.py
_base_ = './_base_/sparse_rcnn_pvt_v2_fpn_300_proposals_crop_mstrain_480-800_3x_coco.py'
model = dict(
    backbone=dict(
        type='PVTv2',
        arch='b2',
        init_cfg=dict(
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b2.pth')))
# as the official b2 config: 8 GPUs x 1 image, lr / 1.4 (b2-li: 8 x 2, lr 2.5e-5)
optim_wrapper = dict(optimizer=dict(lr=2.5e-5 / 1.4))
train_dataloader = dict(batch_size=1, num_workers=1)
auto_scale_lr = dict(base_batch_size=8)
