# The 3x multi-scale recipe of the official whai362/PVT PVTv2 detectors (Mask R-CNN, Cascade
# Mask R-CNN, ATSS, GFL "3x_mstrain") on mmdet 3.x, without model and dataset: the family bases
# (./<detector>_pvt_v2_fpn_3x_mstrain*.py) add those and build their train pipeline around
# `ms_crop_resize`. Official: 36 epochs, steps [27, 33], 500-iter linear warm-up from 0.001x,
# AdamW lr 1e-4, wd 0.05 (none on norms), no gradient clipping, 8 GPUs x 2 images.
_base_ = [
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['pvt_mm'], allow_failed_imports=False)

# "augmentation strategy originates from DETR / Sparse RCNN": either a resize of the short side
# to 480..800 (step 32), or a resize to 400/500/600, a random 384..600 crop and the resize
# (mmdet 2.x AutoAugment + Resize(override=True) == mmdet 3.x RandomChoice, as mmdet's own
# Swin 3x configs port it). The official pipeline flips before it, as here.
ms_scales = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333),
             (672, 1333), (704, 1333), (736, 1333), (768, 1333), (800, 1333)]
ms_crop_resize = dict(
    type='RandomChoice',
    transforms=[
        [dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True)],
        [
            dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)],
                 keep_ratio=True),
            dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                 allow_negative_crop=True),
            dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True),
        ],
    ])

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33],
         gamma=0.1)
]
# the official paramwise keys (taken from the Swin configs: only 'norm' matches PVT
# parameters, i.e. every LayerNorm of the backbone gets no weight decay)
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                   weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'absolute_pos_embed': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)
    }))
# batch: 8 GPUs x 2 images (the dataset bases' batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
