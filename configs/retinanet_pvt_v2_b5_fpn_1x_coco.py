# RetinaNet with PVTv2-b5. Recipe and comments: ./_base_/retinanet_pvt_fpn_1x_coco.py
_base_ = './_base_/retinanet_pvt_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        type='PVTv2',
        arch='b5',
        init_cfg=dict(
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b5.pth')))
# as the official configs of the largest models: 8 GPUs x 1 image, lr / 1.4
optim_wrapper = dict(optimizer=dict(lr=1e-4 / 1.4))
train_dataloader = dict(batch_size=1, num_workers=1)
auto_scale_lr = dict(base_batch_size=8)
