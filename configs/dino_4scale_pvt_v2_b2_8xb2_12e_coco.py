# DINO (4 scales) with a PVTv2-b2 backbone: mmdet 3.x's dino-4scale_r50_8xb2-12e_coco recipe
# with the backbone swapped (not an official whai362/PVT config; no published result). Kept
# from mmdet's recipe: 900 queries, 100 denoising queries, the DETR crop augmentation, AdamW
# lr 1e-4 wd 1e-4 with lr x0.1 on the backbone, gradient clipping max_norm 0.1, 12 epochs with
# a step at 11, 8 GPUs x 2 images.
# Swapped: ResNet-50 C3-C5 (512/1024/2048 channels) -> PVTv2 stages 2-4 (strides 8/16/32,
# 128/320/512 channels); the ChannelMapper adds the 4th scale (stride 64) with a 3x3 stride-2
# conv on the last map (num_outs=4). Deliberate differences to the ResNet recipe: no frozen
# stage / frozen norms (PVT is trained whole, as in every PVT detection recipe), drop path 0.1.
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'
custom_imports = dict(imports=['pvt_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='PVTv2',
        arch='b2',
        out_indices=(1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b2.pth')),
    neck=dict(in_channels=[128, 320, 512]))

# Data: data/coco/ (README "Data preparation"), or $PVT_MM_DATA_ROOT/coco/ when that is set
data_root = '{{$PVT_MM_DATA_ROOT:data}}/coco/'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
