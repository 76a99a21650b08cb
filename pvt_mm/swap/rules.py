"""Where stock mmdet/mmseg configs feed backbone maps into the model, and how each place is
rewired for a PVT backbone (used by :mod:`pvt_mm.swap`).

One (sub-)model at a time (``model``, ``model.detector``, ``model.reid``): its backbone is
replaced, then exactly one consumer of the backbone maps is fixed: the first neck (with the
heads that read maps a JPU neck passes through, or the head behind a ``GlobalAveragePooling``
neck), or, without a neck, the heads reading the backbone (mmseg heads by ``in_index``,
MaskFormer-style heads reading all maps) or, for C4 detectors whose ResNet ``res5`` RoI head
needs a fixed width, a 1x1 ``ChannelMapper`` adapter. Kinds that cannot be rewired correctly
are refused with the reason.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..arch import PVTArch

# ImageNet statistics (RGB, 0-255) the official PVT checkpoints were trained with
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]
SUBMODEL_KEYS = ('detector', 'reid')  # trackers, video instance models, semi-supervised
SEG_HEAD_KEYS = ('decode_head', 'auxiliary_head')  # mmseg heads that may read the backbone
ALL_MAPS_HEAD_KEYS = ('panoptic_head', 'track_head')  # mmdet (Mask2)Former pixel decoders
# stock ResNet-family backbones: out_indices 0-3 are strides 4-32, as PVT's stages
RESNET_FAMILY = re.compile(r'^(mmpretrain\.|mmdet\.|mmseg\.)?(ResNet|ResNetV1c|ResNetV1d|'
                           r'ResNeXt|Res2Net|ResNeSt|DetectoRS_ResNet|DetectoRS_ResNeXt)$')

REFUSED_BACKBONES = {
    'TridentResNet': "TridentNet's three shared-weight dilated branches are built into "
                     "TridentResNet's stage 4 and TridentFasterRCNN/TridentRoIHead expect "
                     'them; PVT has no trident branches',
    'ICNet': "ICNet calls its inner ResNet's stem, maxpool and layer1..layer4 one by one "
             'between its own image resizes (mmseg ICNet.forward), so only a ResNet fits '
             'inside it',
}
REFUSED_NECKS = {
    'RFP': "DetectoRS' recursive feature pyramid (RFP neck) feeds the FPN outputs back into a "
           'second, ResNet-shaped DetectoRS_ResNet (rfp_backbone, rfp_inplanes) through '
           'switchable atrous convolutions; a PVT backbone cannot take that feedback',
    'ICNeck': 'ICNeck reads the channels of the ICNet wrapper, which only holds a ResNet',
}
PASS_THROUGH_NECKS = ('JPU',)  # return some backbone maps unchanged next to their own output
POOLING_NECKS = ('GlobalAveragePooling',)  # keep the channels of the map they pool


class SwapError(ValueError):
    """The config cannot be swapped automatically (the message says why / what to edit)."""


def as_list(value: Any) -> list:
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) \
        else [value]


def submodel_paths(model: Mapping) -> list[tuple[str, ...]]:
    """Keys leading to each (sub-)model with a backbone: ``()`` is ``model`` itself."""
    paths = [()] if isinstance(model.get('backbone'), Mapping) else []
    paths += [(k,) for k in SUBMODEL_KEYS
              if isinstance(model.get(k), Mapping) and isinstance(model[k].get('backbone'),
                                                                   Mapping)]
    return paths


def stock_stage_channels(backbone: Mapping) -> list[int] | None:
    """Channels of the four stages of a ResNet-family backbone (None for other types)."""
    if not RESNET_FAMILY.match(str(backbone.get('type'))):
        return None
    depth = backbone.get('depth', 50)
    expansion = 1 if depth in (18, 34) else 4
    base = backbone.get('base_channels', 64)
    return [base * 2 ** i * expansion for i in range(4)]


def _index(i: int, n: int, where: str) -> int:
    if not -n <= i < n:
        raise SwapError(f'{where}.in_index {i} is outside the backbone\'s {n} outputs')
    return i % n


def fix_seg_head(head: Mapping, readable: Mapping[int, int], n_maps: int, where: str) -> dict:
    """Overrides for an mmseg-style head reading maps ``readable`` (index -> channels) of
    ``n_maps`` inputs; ``{}`` when it reads none of them (e.g. a neck's own output)."""
    if isinstance(head.get('kernel_generate_head'), Mapping):  # K-Net IterativeDecodeHead
        inner = fix_seg_head(head['kernel_generate_head'], readable, n_maps,
                             f'{where}.kernel_generate_head')
        return dict(kernel_generate_head=inner) if inner else {}
    kind = head.get('type')
    if 'in_index' in head and 'in_channels' in head:
        idx = [_index(i, n_maps, where) for i in as_list(head['in_index'])]
        hits = [i in readable for i in idx]
        if not any(hits):
            return {}
        if not all(hits):
            raise SwapError(f'{where} {kind} in_index {head["in_index"]} mixes backbone maps '
                            'and neck outputs; edit it by hand')
        picked = [readable[i] for i in idx]
        new: dict[str, Any] = dict(
            in_channels=picked if isinstance(head['in_index'], Sequence) else picked[0])
        if 'c1_in_channels' in head:  # DeepLabV3+ (DepthwiseSeparableASPPHead) reads inputs[0]
            if 0 not in readable:
                raise SwapError(f'{where} {kind} reads c1 from map 0, which is not a backbone '
                                'map here')
            new['c1_in_channels'] = readable[0]
        return new
    if isinstance(head.get('in_channels'), Sequence) and 'in_index' not in head:
        # pixel decoders (mmseg Mask2FormerHead) read every map in order
        if len(head['in_channels']) != n_maps or len(readable) != n_maps:
            raise SwapError(f'{where} {kind} in_channels={list(head["in_channels"])} reads '
                            f'{len(head["in_channels"])} maps but the backbone gives '
                            f'{n_maps}; pass --out-indices')
        return dict(in_channels=[readable[i] for i in range(n_maps)])
    raise SwapError(f'{where} {kind} lacks in_index/in_channels; edit it by hand')


def _fix_heads(sub: Mapping, keys: Sequence[str], readable: Mapping[int, int], n_maps: int,
               where: str) -> dict:
    out: dict[str, Any] = {}
    for key in keys:
        heads = sub.get(key)
        if not heads:
            continue
        fixed = [fix_seg_head(h, readable, n_maps, f'{where}.{key}') for h in as_list(heads)]
        if isinstance(heads, Mapping):
            if fixed[0]:
                out[key] = fixed[0]
        elif any(fixed):  # a list of heads replaces the base list: write each head in full
            out[key] = [_merged(h, f) for h, f in zip(heads, fixed)]
    return out


def _merged(base: Mapping, new: Mapping) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _merged(base[k], v) if isinstance(v, Mapping) and isinstance(
            base.get(k), Mapping) else v
    return out


def fix_neck(neck: Mapping, channels: list[int], where: str) -> tuple[dict, dict[int, int]]:
    """Overrides for the neck reading the backbone, and the maps it passes through to the
    heads unchanged (neck output index -> channels)."""
    kind = neck.get('type')
    if kind in REFUSED_NECKS:
        raise SwapError(f'{where}: {REFUSED_NECKS[kind]}')
    if kind in POOLING_NECKS:
        return {}, {i: c for i, c in enumerate(channels)}
    if 'in_channels' not in neck:
        raise SwapError(f'{where} {kind} has no in_channels; edit it by hand')
    old = neck['in_channels']
    if isinstance(old, int):
        if len(channels) != 1:
            raise SwapError(f'{where} {kind} takes one input (in_channels={old}) but the '
                            f'backbone gives {len(channels)}; pass --out-indices')
        return dict(in_channels=channels[0]), {}
    if len(old) != len(channels):
        raise SwapError(f'{where} {kind} in_channels={list(old)} has {len(old)} inputs but '
                        f'the backbone gives {len(channels)}; pass --out-indices')
    new = dict(in_channels=type(old)(channels) if isinstance(old, tuple) else list(channels))
    passed: dict[int, int] = {}
    if kind in PASS_THROUGH_NECKS:  # JPU: outs = inputs[start:end - 1] + [its own map]
        start = neck.get('start_level', 0)
        end = neck.get('end_level', -1)
        end = len(channels) if end == -1 else end
        passed = {j: channels[start + j] for j in range(end - 1 - start)}
    return new, passed


def _backbone_indices(old: Mapping, spec: PVTArch, out_indices: Sequence[int] | None,
                      where: str) -> tuple[int, ...]:
    indices = tuple(out_indices if out_indices is not None
                    else old.get('out_indices', (0, 1, 2, 3)))
    if not indices or any(not 0 <= i < len(spec.embed_dims) for i in indices):
        raise SwapError(f'{where} out_indices {indices} are not PVT stages 0-3 (the old '
                        f'backbone {old.get("type")} counts differently); pass --out-indices')
    return indices


def _drop_resnet_weights(sub: Mapping) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if sub.get('pretrained'):  # mmseg EncoderDecoder would hand ResNet weights to PVT
        out['pretrained'] = None
    init = sub.get('init_cfg')
    if isinstance(init, Mapping) and init.get('type') == 'Pretrained':
        out['init_cfg'] = None  # a whole-model checkpoint of the ResNet model
    return out


def _fix_bisenetv1(sub: Mapping, spec: PVTArch, backbone_args: Mapping[str, Any],
                   out_indices: Sequence[int] | None, where: str) -> dict:
    """BiSeNetV1 wraps a backbone (``backbone_cfg``) and reads its four maps: ARMs on
    stages 3 and 4 (``context_channels[1:]``) map them to ``context_channels[0]``, and the
    FeatureFusionModule takes ``context_channels[1]`` = ``spatial_channels[-1]`` +
    ``context_channels[0]`` channels. mmseg's R-18 and R-50 configs split stage 3's width
    evenly between the two paths; so does the swap: context ``(c3 / 2, c3, c4)``,
    ``spatial_channels[-1] = c3 / 2``, and the heads reading the context outputs (1, 2)
    take ``c3 / 2`` channels."""
    old = sub['backbone']
    inner = old.get('backbone_cfg')
    if not isinstance(inner, Mapping):
        raise SwapError(f'{where}.backbone BiSeNetV1 has no backbone_cfg to swap')
    indices = _backbone_indices(inner, spec, out_indices, f'{where}.backbone.backbone_cfg')
    if indices != (0, 1, 2, 3):
        raise SwapError(f'{where}.backbone BiSeNetV1 reads all four stages of its backbone_cfg;'
                        f' out_indices must be (0, 1, 2, 3), got {indices}')
    c3, c4 = spec.embed_dims[2], spec.embed_dims[3]
    context = c3 // 2
    spatial = list(old.get('spatial_channels', (64, 64, 64, 128)))
    spatial[-1] = c3 - context
    out = _drop_resnet_weights(sub)
    out['backbone'] = dict(
        backbone_cfg=dict(_delete_=True, type=spec.backbone_type,
                          out_indices=indices, **backbone_args),
        context_channels=(context, c3, c4), spatial_channels=tuple(spatial))
    # BiSeNetV1 returns (fused, context 16, context 32)[out_indices]
    returned = as_list(old.get('out_indices', (0, 1, 2)))
    readable = {j: context for j, i in enumerate(returned) if i in (1, 2)}
    if readable:
        out.update(_fix_heads(sub, SEG_HEAD_KEYS, readable, len(returned), where))
    return out


def fix_model(sub: Mapping, spec: PVTArch, backbone_args: Mapping[str, Any],
              out_indices: Sequence[int] | None, where: str) -> dict:
    """Overrides for one (sub-)model ``sub`` at ``where`` (e.g. ``'model.detector'``)."""
    old = sub['backbone']
    kind = str(old.get('type'))
    if kind in REFUSED_BACKBONES:
        raise SwapError(f'{where}.backbone {kind}: {REFUSED_BACKBONES[kind]}')
    if kind == 'BiSeNetV1':
        return _fix_bisenetv1(sub, spec, backbone_args, out_indices, where)
    indices = _backbone_indices(old, spec, out_indices, f'{where}.backbone')
    channels = [spec.embed_dims[i] for i in indices]
    backbone: dict[str, Any] = dict(_delete_=True, type=spec.backbone_type,
                                    out_indices=indices, **backbone_args)
    out = _drop_resnet_weights(sub)
    out['backbone'] = backbone

    neck = sub.get('neck')
    if neck:
        first = neck if isinstance(neck, Mapping) else neck[0]
        fixed, passed = fix_neck(first, channels, f'{where}.neck')
        if isinstance(neck, Mapping):
            if fixed:
                out['neck'] = fixed
        elif fixed:  # a list of necks: the first reads the backbone; lists are replaced whole
            out['neck'] = [_merged(first, fixed), *map(dict, neck[1:])]
        if first.get('type') in POOLING_NECKS:  # a classification-style head after pooling
            head = sub.get('head')
            if not isinstance(head, Mapping) or 'in_channels' not in head:
                raise SwapError(f'{where}: {first.get("type")} neck without a head with '
                                'in_channels; edit it by hand')
            out['head'] = dict(in_channels=channels[-1])
        elif passed:
            out.update(_fix_heads(sub, SEG_HEAD_KEYS, passed, len(passed) + 1, where))
        return out

    readable = dict(enumerate(channels))  # no neck: the heads read the backbone
    heads = _fix_heads(sub, SEG_HEAD_KEYS, readable, len(channels), where)
    for key in ALL_MAPS_HEAD_KEYS:
        head = sub.get(key)
        if isinstance(head, Mapping) and 'in_channels' in head:
            heads[key] = fix_seg_head({k: v for k, v in head.items() if k != 'in_index'},
                                      readable, len(channels), f'{where}.{key}')
    if heads:
        return {**out, **heads}
    old_channels = stock_stage_channels(old)
    reads_backbone = any(k in sub for k in ('rpn_head', 'roi_head', 'bbox_head'))
    if reads_backbone and old_channels and len(indices) == 1:
        # C4 detectors: RPN head and the ResNet res5 RoI head (ResLayer) are built for the
        # old stage's width; a 1x1 conv maps PVT's map to it
        old_index = as_list(old.get('out_indices', indices))[0]
        out['neck'] = dict(type='ChannelMapper', in_channels=[channels[0]],
                           out_channels=old_channels[old_index], kernel_size=1,
                           norm_cfg=None, act_cfg=None, num_outs=1)
        if 'neck' in sub:  # ``neck=None`` in the stock config: replace it
            out['neck'] = dict(_delete_=True, **out['neck'])
        return out
    raise SwapError(f'{where} has no neck and no head reading the backbone that the swap '
                    'knows (necks with in_channels; mmseg heads with in_index; '
                    f'{", ".join(ALL_MAPS_HEAD_KEYS)}; single-map C4 detectors); edit it '
                    'by hand')


def stride_notes(model: Mapping, spec: PVTArch, out_indices: Sequence[int] | None,
                 where: str = 'model') -> list[str]:
    """One line per (sub-)model whose stock ResNet-family backbone is dilated (strides or
    dilations changed, e.g. mmseg's ``-d8`` configs at output stride 8): the strides of the
    maps its consumers read change to PVT's 4/8/16/32 (coarser maps before upsampling)."""
    notes = []
    for path in submodel_paths(model):
        sub = model
        for key in path:
            sub = sub[key]
        old = sub['backbone']
        if old.get('type') == 'BiSeNetV1':
            old = old.get('backbone_cfg') or {}
        if not RESNET_FAMILY.match(str(old.get('type'))) or 'strides' not in old:
            continue
        strides, stride = [], 4
        for s in old['strides']:
            stride *= s
            strides.append(stride)
        try:
            indices = tuple(out_indices if out_indices is not None
                            else old.get('out_indices', (0, 1, 2, 3)))
            stock = [strides[i] for i in indices]
        except (IndexError, TypeError):
            continue
        pvt = [4 * 2 ** i for i in indices]
        if stock != pvt:
            name = '.'.join((where, *path, 'backbone'))
            notes.append(
                f'{name}: the stock {old.get("type")} (strides {tuple(old["strides"])}, '
                f'dilations {tuple(old.get("dilations", ()))}) gives maps at strides '
                f'{"/".join(map(str, stock))}; PVT ({spec.version == 1 and "v1" or "v2"}) '
                f'gives {"/".join(map(str, pvt))}: the heads now read coarser maps (output '
                f'stride {stock[-1]} -> {pvt[-1]})')
    return notes
