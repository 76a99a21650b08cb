"""mmengine extensions for training PVT models (registered in mmengine's root registries)."""
from .cpu import CPUAmpOptimWrapper, CPUDistributedDataParallel
from .hooks import DropPathWarmupHook

__all__ = ['CPUAmpOptimWrapper', 'CPUDistributedDataParallel', 'DropPathWarmupHook']
