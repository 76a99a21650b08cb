# Runtime and schedule of the demo detectors: mmdet's default runtime; from random init,
# AdamW with a short linear warm-up then cosine decay, validation once at the end.
_base_ = 'mmdet::_base_/default_runtime.py'
max_epochs = 10  # bbox mAP@0.5 0.586 (12 epochs: 0.660): epochs traded for the 10-minute demo
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
warmup_iters = 100
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, eta_min=1e-5,
         convert_to_iter_based=True)
]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs))
log_processor = dict(window_size=10)
randomness = dict(seed=0)  # reproducible demo numbers
