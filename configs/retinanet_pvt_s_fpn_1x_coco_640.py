# RetinaNet with PVT-S at 640 px (short side; long side <= 1066): the official whai362/PVT
# retinanet_pvt_s_fpn_1x_coco_640 recipe. Everything else as ./retinanet_pvt_s_fpn_1x_coco.py
# (recipe and comments: ./_base_/retinanet_pvt_fpn_1x_coco.py).
_base_ = './retinanet_pvt_s_fpn_1x_coco.py'
image_scale = (1066, 640)
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
