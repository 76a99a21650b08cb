"""mmengine extensions for training PVT models (registered in mmengine's root registries)."""
from .hooks import DropPathWarmupHook

__all__ = ['DropPathWarmupHook']
