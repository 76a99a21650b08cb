from .backbones import PVT, PVTv2  # noqa: F401  (registers the backbones)
