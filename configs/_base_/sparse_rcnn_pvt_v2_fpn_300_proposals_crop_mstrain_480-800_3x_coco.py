# Sparse R-CNN + PVTv2 + FPN, 300 proposals, COCO 3x multi-scale with crops: the official
# whai362/PVT sparse_rcnn_pvt_v2_*_fpn_300_proposals_crop_mstrain_480-800_3x_coco recipe on
# mmdet 3.x. Family base. mmdet's own 300-proposal crop 3x config is the official recipe's
# base (6 DII stages, FPN P2-P5, the DETR crop augmentation, 36 epochs, steps [27, 33],
# 500-iter warm-up, AdamW lr 2.5e-5 wd 1e-4, gradient clipping max_norm 1): only the backbone
# (and the per-variant lr / batch in the configs) change.
_base_ = 'mmdet::sparse_rcnn/sparse-rcnn_r50_fpn_300-proposals_crop-ms-480-800-3x_coco.py'
custom_imports = dict(imports=['pvt_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='PVTv2',
        arch='b2',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b2.pth')),
    neck=dict(in_channels=[64, 128, 320, 512]))
# 8 GPUs x 2 images (the b2 config overrides: 8 x 1, lr / 1.4)
optim_wrapper = dict(optimizer=dict(lr=2.5e-5))
auto_scale_lr = dict(enable=False, base_batch_size=16)

# Data: data/coco/ (README "Data preparation"), or $PVT_MM_DATA_ROOT/coco/ when that is set
data_root = '{{$PVT_MM_DATA_ROOT:data}}/coco/'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
