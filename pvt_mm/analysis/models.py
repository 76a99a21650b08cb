"""The models the analysis tools measure, beyond what :mod:`pvt_mm.engine.runtime` builds.

Our backbones' peers by arch name (mmdet's built-in ``PyramidVisionTransformer(V2)`` and timm's
``pvt_v2_*``), configs with the backbone swapped between pvt_mm and mmdet's built-in where a peer
exists (:func:`with_backbone_impl`), and synthetic data batches for whole models.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from mmengine.config import Config
from torch import Tensor, nn

from ..arch import ARCHS, OFFICIAL_ALIASES, PVTArch, check_arch
from ..engine.runtime import config_scope
from ..models.backbones import BACKBONES, build_pvt

Impl = Literal['pvt_mm', 'mmdet', 'timm']
MMDET_TYPES = {1: 'PyramidVisionTransformer', 2: 'PyramidVisionTransformerV2'}
# backbone settings that mean the same in pvt_mm and mmdet's built-in
SHARED_BACKBONE_KEYS = ('in_channels', 'out_indices', 'pretrain_img_size', 'drop_rate',
                        'attn_drop_rate', 'drop_path_rate', 'qkv_bias')


def check_shape(values: Sequence[int]) -> tuple[int, int]:
    """A tool's ``--shape H [W]`` -> (H, W); ValueError for anything else."""
    if len(values) not in (1, 2) or min(values) <= 0:
        raise ValueError(f'--shape takes one or two positive sizes (H [W]), got {list(values)}')
    return (values[0], values[-1])


def mmdet_backbone_cfg(arch: str) -> dict | None:
    """mmdet's built-in backbone config with the same architecture, or None (no peer: li)."""
    spec = ARCHS[check_arch(arch)]
    base = spec.embed_dims[0] // spec.num_heads[0]
    # mmdet derives stage i's width as embed_dims * num_heads[i]
    if spec.linear or any(d != base * h for d, h in zip(spec.embed_dims, spec.num_heads)):
        return None
    return dict(type=MMDET_TYPES[spec.version], embed_dims=base, num_layers=list(spec.depths),
                num_heads=list(spec.num_heads), sr_ratios=list(spec.sr_ratios),
                mlp_ratios=list(spec.mlp_ratios))


# defaults of mmdet's PyramidVisionTransformer for the settings that define the architecture
_MMDET_DEFAULTS = dict(embed_dims=64, num_layers=[3, 4, 6, 3], num_heads=[1, 2, 5, 8],
                       sr_ratios=[8, 4, 2, 1], mlp_ratios=[8, 8, 4, 4])


def arch_of_mmdet_cfg(cfg: dict) -> str | None:
    """The ARCHS name whose architecture an mmdet built-in backbone config has, or None."""
    given = {k: cfg.get(k, default) for k, default in _MMDET_DEFAULTS.items()}
    given = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in given.items()}
    for name in ARCHS:
        peer = mmdet_backbone_cfg(name)
        if (peer is not None and peer['type'] == _type_name(cfg)
                and all(given[k] == peer[k] for k in _MMDET_DEFAULTS)):
            return name
    return None


class TimmFeatures(nn.Module):
    """timm's ``pvt_v2_*`` returning the four stage maps like the mmdet backbones.

    forward: (B, 3, H, W) -> tuple of 4 NCHW maps (strides 4, 8, 16, 32).
    """

    def __init__(self, arch: str) -> None:
        super().__init__()
        import timm
        self.model = timm.create_model(f'pvt_v2_{arch}', pretrained=False, num_classes=0)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model.forward_intermediates(x, intermediates_only=True))


def build_peer_backbone(arch: str, impl: Impl, **kwargs: Any) -> nn.Module:
    """The backbone for ``arch`` from ``impl``; ValueError where that library has none."""
    name = check_arch(arch)
    if impl == 'pvt_mm':
        return build_pvt(name, **kwargs)
    if impl == 'mmdet':
        peer = mmdet_backbone_cfg(name)
        if peer is None:
            raise ValueError(f'mmdet has no built-in backbone for PVT arch {name!r}')
        import mmdet.models  # noqa: F401  (registers the built-in backbones)
        from mmdet.registry import MODELS as MMDET_MODELS
        return MMDET_MODELS.build({**peer, **kwargs})
    if impl == 'timm':
        if ARCHS[name].version != 2:
            raise ValueError(f'timm has no PVT v1 model (arch {name!r})')
        return TimmFeatures(name)
    raise ValueError(f'unknown implementation {impl!r}; choose pvt_mm, mmdet or timm')


# ---- configs with the other implementation's backbone ---------------------------------------
def _type_name(backbone: dict) -> str:
    return str(backbone.get('type', '')).split('.')[-1]


def backbone_impl(cfg: Config) -> tuple[Impl | None, str | None]:
    """(implementation, arch name) of the config's backbone; (None, None) if not a PVT."""
    bb = cfg.model.backbone
    t = _type_name(bb)
    if t in OFFICIAL_ALIASES:  # official class names, pvt_small_f4 included
        return 'pvt_mm', OFFICIAL_ALIASES[t][0]
    if t in BACKBONES:  # without arch: the class default (PVT small, PVTv2 b2)
        return 'pvt_mm', check_arch(bb.get('arch', BACKBONES[t].default_arch))
    if t in MMDET_TYPES.values():
        return 'mmdet', arch_of_mmdet_cfg(bb)
    return None, None


def with_backbone_impl(cfg: Config, impl: Impl) -> Config | None:
    """A copy of ``cfg`` whose PVT backbone comes from ``impl`` ('pvt_mm' or 'mmdet'), or
    None where that implementation has no such architecture. Pretrained init is dropped
    (benchmarks use random weights); out_indices, drop rates etc. are kept."""
    have, arch = backbone_impl(cfg)
    if have is None:
        raise ValueError(f'the config backbone {cfg.model.backbone.get("type")!r} is not a PVT')
    if have == impl:
        return copy.deepcopy(cfg)
    if arch is None:
        return None
    old = cfg.model.backbone
    if impl == 'mmdet':
        new = mmdet_backbone_cfg(arch)
        if new is None:
            return None
        if config_scope(cfg) != 'mmdet':  # e.g. an mmseg model: name mmdet's registry
            new['type'] = f'mmdet.{new["type"]}'
    else:
        new = dict(type=ARCHS[arch].backbone_type, arch=arch)
    new.update({k: old[k] for k in SHARED_BACKBONE_KEYS if k in old})
    out = copy.deepcopy(cfg)
    out.model.backbone = new
    return out


def synthetic_batch(model: nn.Module, cfg: Config, shape: Sequence[int], batch_size: int = 1,
                    with_gt: bool = False, seed: int = 0) -> dict[str, list]:
    """A data batch as a dataloader gives it: ``inputs`` uint8 (3, H, W) images and
    ``data_samples`` with metainfo (and random ground truth for training: a few boxes, with
    masks where the model has a mask head; or a semantic map)."""
    g = torch.Generator().manual_seed(seed)
    h, w = shape
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), scale_factor=(1., 1.),
                flip=False)
    inputs, samples = [], []
    for _ in range(batch_size):
        inputs.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        samples.append(_det_sample(model, meta, g, with_gt) if config_scope(cfg) == 'mmdet'
                       else _seg_sample(model, meta, g, with_gt))
    return dict(inputs=inputs, data_samples=samples)


NUM_GT_BOXES = 4


def _det_sample(model: nn.Module, meta: dict, g: torch.Generator, with_gt: bool) -> Any:
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    sample = DetDataSample(metainfo=meta)
    if with_gt:
        h, w = meta['img_shape']
        xy = torch.rand(NUM_GT_BOXES, 2, generator=g) * torch.tensor([w, h]) * 0.5
        wh = (torch.rand(NUM_GT_BOXES, 2, generator=g) * 0.4 + 0.1) * torch.tensor([w, h])
        gt = InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                          labels=torch.randint(0, _num_classes(model), (NUM_GT_BOXES,),
                                               generator=g))
        roi_head = getattr(model, 'roi_head', None)
        if roi_head is not None and getattr(roi_head, 'with_mask', False):
            masks = torch.zeros(NUM_GT_BOXES, h, w, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(gt.bboxes.long().tolist()):
                masks[i, y0:y1, x0:x1] = 1
            gt.masks = BitmapMasks(masks.numpy(), h, w)
        sample.gt_instances = gt
    return sample


def _seg_sample(model: nn.Module, meta: dict, g: torch.Generator, with_gt: bool) -> Any:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    sample = SegDataSample(metainfo=meta)
    if with_gt:
        h, w = meta['img_shape']
        classes = model.decode_head.num_classes
        sample.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, h, w), generator=g))
    return sample


def _num_classes(model: nn.Module) -> int:
    for head in ('bbox_head', 'roi_head'):
        m = getattr(model, head, None)
        if m is not None:
            m = getattr(m, 'bbox_head', m)
            return m.num_classes
    raise ValueError(f'cannot find the number of classes of {type(model).__name__}')


def arch_spec(arch: str) -> PVTArch:
    """The variant table entry of an arch name (official names accepted)."""
    return ARCHS[check_arch(arch)]
