# Two-stage Deformable DETR with iterative box refinement and a PVTv2-b2 backbone: mmdet 3.x's
# deformable-detr-refine-twostage_r50_16xb2-50e_coco recipe with the backbone swapped (not an
# official whai362/PVT config; no published result). Kept from mmdet's recipe: 300 queries,
# 4 feature levels, the DETR crop augmentation, AdamW lr 2e-4 wd 1e-4 with lr x0.1 on the
# backbone, sampling offsets and reference points, gradient clipping max_norm 0.1, 50 epochs
# with a step at 40, 16 GPUs x 2 images.
# Swapped: ResNet-50 C3-C5 (512/1024/2048 channels) -> PVTv2 stages 2-4 (strides 8/16/32,
# 128/320/512 channels); the ChannelMapper still adds the 4th level (stride 64) with a 3x3
# stride-2 conv. Deliberate differences to the ResNet recipe: no frozen stage / frozen norms
# (PVT has LayerNorms and is trained whole, as in every PVT detection recipe), drop path 0.1.
_base_ = 'mmdet::deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py'
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
