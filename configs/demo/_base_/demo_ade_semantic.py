# The built-in demo's semantic data (tools/make_demo_data.py) in the ADE20K folder layout:
# images/{training,validation}/*.jpg, annotations/{training,validation}/*.png with
# 0 = background and k + 1 = shape class k. Root: `data/demo` or $PVT_MM_DEMO_DATA.
dataset_type = 'BaseSegDataset'
data_root = '{{$PVT_MM_DEMO_DATA:data/demo}}/ade/'
# same order as pvt_mm.demo.SEG_CLASSES (a test checks it)
metainfo = dict(
    classes=('background', 'circle', 'square', 'triangle', 'star', 'ring'),
    palette=[(0, 0, 0), (220, 20, 60), (0, 160, 0), (0, 60, 230), (250, 170, 30),
             (160, 0, 200)])
crop_size = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs')
]
_dataset = dict(
    type=dataset_type,
    data_root=data_root,
    metainfo=metainfo,
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=False)
train_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        **_dataset,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        **_dataset,
        data_prefix=dict(img_path='images/validation',
                         seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
