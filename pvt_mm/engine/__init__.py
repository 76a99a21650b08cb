"""mmengine extensions for training PVT models (registered in mmengine's root registries)."""
from .checkpoint_io import AtomicCheckpointHook
from .cpu import CPUAmpOptimWrapper, CPUDistributedDataParallel
from .hooks import DropPathWarmupHook
from .resume import ExactResumeEpochBasedTrainLoop, enable_exact_resume

__all__ = ['AtomicCheckpointHook', 'CPUAmpOptimWrapper', 'CPUDistributedDataParallel', 'DropPathWarmupHook',
           'ExactResumeEpochBasedTrainLoop', 'enable_exact_resume']
