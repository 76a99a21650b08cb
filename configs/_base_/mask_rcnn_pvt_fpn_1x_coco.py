# Mask R-CNN + PVT + FPN, COCO 1x: the official whai362/PVT detection recipe on mmdet 3.x.
# Family base: configs/mask_rcnn_<backbone>_fpn_1x_coco.py choose the backbone and checkpoint.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',  # 1333x800, 2 images per GPU
    'mmdet::_base_/schedules/schedule_1x.py',  # 12 epochs, steps [8, 11], 500-iter linear warm-up
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['pvt_mm'], allow_failed_imports=False)

# Data: data/coco/ (README "Data preparation"), or $PVT_MM_DATA_ROOT/coco/ when that is set
data_root = '{{$PVT_MM_DATA_ROOT:data}}/coco/'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

model = dict(
    backbone=dict(
        _delete_=True,
        type='PVT',
        arch='small',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_small.pth')),
    # FPN over all four stages (P2-P5) plus a max-pooled P6, as the official configs
    neck=dict(in_channels=[64, 128, 320, 512], out_channels=256, num_outs=5))

# AdamW as in the official configs, for 8 GPUs x 2 images (auto_scale_lr base_batch_size 16)
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, weight_decay=1e-4))
