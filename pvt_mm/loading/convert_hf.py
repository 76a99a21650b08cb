"""Hugging Face transformers' PVT layout <-> pvt_mm's, and transformers folders.

transformers' ``PvtModel`` / ``PvtForImageClassification`` (v1, base prefix ``pvt.``) and
``PvtV2Model`` / ``PvtV2ForImageClassification`` / ``PvtV2Backbone`` (v2, ``pvt_v2.``) name the
official parameters differently (stage i, block j; v1 | v2)::

    stages.i.patch_embed.proj / .norm  encoder.patch_embeddings.i.projection / .layer_norm
                                       | encoder.layers.i.patch_embedding.proj / .layer_norm
    stages.i.pos_embed (v1)            encoder.patch_embeddings.i.position_embeddings
                                       (stage 4: (1, 1 + h*w, C), the cls slot first)
    stages.i.norm (v2)                 encoder.layers.i.layer_norm
    blocks.j.norm1 / norm2             layer_norm_1 / layer_norm_2
    blocks.j.attn.q                    attention.self.query | attention.query
    blocks.j.attn.kv (2C, C)           key ++ value, each (C, C), concatenated key first
    blocks.j.attn.proj                 attention.output.dense | attention.proj
    blocks.j.attn.sr / attn.norm       attention.self.sequence_reduction / .layer_norm
                                       | attention.spatial_reduction / .layer_norm
    blocks.j.mlp.fc1 / fc2 / dwconv    mlp.dense1 / mlp.dense2 / mlp.dwconv.dwconv

Not backbone parameters (dropped on the way in, with a log line): v1's ``cls_token``, its
position slot and final ``encoder.layer_norm``; the ``classifier`` head.

Folders (``save_pretrained`` / hub snapshots: ``config.json`` + weights) are read and written
by :mod:`pvt_mm.loading.hf_folder`. Architecture differences the weights do not carry:
transformers uses ``layer_norm_eps`` (1e-6) in every norm, the official code 1e-5 in the
patch-embedding and spatial-reduction norms; transformers' v1 runs the cls token through stage
4's attention.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from mmengine.logging import print_log
from torch import Tensor

from ..arch import NUM_STAGES, PVTArch
from .errors import CheckpointError
from .errors import listing as _listing

__all__ = ['transformers_layout', 'from_transformers', 'to_transformers', 'classifier_parts',
           'hf_config', 'LAYOUTS', 'CONFIG_NAME']

CONFIG_NAME = 'config.json'
HF_LN_EPS = 1e-6  # transformers' layer_norm_eps (every norm)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity
class Layout:
    """One transformers PVT version's key layout (paths are relative to a stage / block)."""

    version: int
    model_type: str
    prefix: str  # base_model_prefix of the task models
    stage_re: re.Pattern
    block_re: re.Pattern
    stage: str  # stage i's prefix, ``.format(i=...)``
    block: str  # block j of stage i, ``.format(i=..., j=...)``
    qkv: str  # where query / key / value sit in a block
    stage_names: Mapping[str, str]  # pvt_mm module -> transformers module, inside a stage
    block_names: Mapping[str, str]  # the same inside a block
    dropped: re.Pattern  # keys that are not backbone parameters
    architectures: tuple[str, str]  # (backbone-only, with the classifier head)
    defaults: Mapping[str, Any]  # transformers' config defaults that name the variant


_BLOCK_COMMON = {'norm1': 'layer_norm_1', 'norm2': 'layer_norm_2', 'mlp.fc1': 'mlp.dense1',
                 'mlp.fc2': 'mlp.dense2'}
_DEFAULTS = dict(num_encoder_blocks=4, depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8],
                 mlp_ratios=[8, 8, 4, 4], strides=[4, 2, 2, 2], hidden_act='gelu',
                 num_channels=3, qkv_bias=True)
V1 = Layout(
    1, 'pvt', 'pvt.', re.compile(r'encoder\.patch_embeddings\.(?P<i>[0-3])\.(?P<rest>.+)'),
    re.compile(r'encoder\.block\.(?P<i>[0-3])\.(?P<j>\d+)\.(?P<rest>.+)'),
    'encoder.patch_embeddings.{i}.', 'encoder.block.{i}.{j}.', 'attention.self.',
    {'patch_embed.proj': 'projection', 'patch_embed.norm': 'layer_norm',
     'pos_embed': 'position_embeddings'},
    {**_BLOCK_COMMON, 'attn.q': 'attention.self.query', 'attn.proj': 'attention.output.dense',
     'attn.sr': 'attention.self.sequence_reduction', 'attn.norm': 'attention.self.layer_norm'},
    re.compile(r'encoder\.patch_embeddings\.3\.cls_token|encoder\.layer_norm\.(?:weight|bias)'
               r'|classifier\.(?:weight|bias)'),
    ('PvtModel', 'PvtForImageClassification'),
    {**_DEFAULTS, 'hidden_sizes': [64, 128, 320, 512], 'patch_sizes': [4, 2, 2, 2],
     'sequence_reduction_ratios': [8, 4, 2, 1], 'image_size': 224})
V2 = Layout(
    2, 'pvt_v2', 'pvt_v2.', re.compile(r'encoder\.layers\.(?P<i>[0-3])\.(?P<rest>.+)'),
    re.compile(r'encoder\.layers\.(?P<i>[0-3])\.blocks\.(?P<j>\d+)\.(?P<rest>.+)'),
    'encoder.layers.{i}.', 'encoder.layers.{i}.blocks.{j}.', 'attention.',
    {'patch_embed.proj': 'patch_embedding.proj', 'patch_embed.norm': 'patch_embedding.layer_norm',
     'norm': 'layer_norm'},
    {**_BLOCK_COMMON, 'attn.q': 'attention.query', 'attn.proj': 'attention.proj',
     'attn.sr': 'attention.spatial_reduction', 'attn.norm': 'attention.layer_norm',
     'mlp.dwconv.dwconv': 'mlp.dwconv.dwconv'},
    re.compile(r'classifier\.(?:weight|bias)'),
    ('PvtV2Model', 'PvtV2ForImageClassification'),
    {**_DEFAULTS, 'hidden_sizes': [32, 64, 160, 256], 'patch_sizes': [7, 3, 3, 3],
     'sr_ratios': [8, 4, 2, 1], 'linear_attention': False, 'image_size': 224})
LAYOUTS = (V1, V2)


def _split(path: str) -> tuple[str, str]:
    """``'attention.query.weight'`` -> ``('attention.query', '.weight')``; a bare parameter
    (``'position_embeddings'``) -> ``(path, '')``."""
    module, _, leaf = path.rpartition('.')
    return (module, '.' + leaf) if leaf in ('weight', 'bias') and module else (path, '')


def _strip(layout: Layout, key: str) -> str:
    return key[len(layout.prefix):] if key.startswith(layout.prefix) else key


def transformers_layout(keys: Iterable[str]) -> Layout | None:
    """The transformers layout (:data:`V1` / :data:`V2`) of a state dict's keys, or None."""
    counts = {layout: 0 for layout in LAYOUTS}
    for key in keys:
        for layout in LAYOUTS:
            name = _strip(layout, key)
            if layout.block_re.fullmatch(name) or layout.stage_re.fullmatch(name):
                counts[layout] += 1
    best = max(LAYOUTS, key=counts.get)
    return best if counts[best] else None


# ---- transformers -> pvt_mm ----------------------------------------------------------------
def _hf_names(layout: Layout, key: str) -> list[str]:
    """A pvt_mm key -> its transformers key(s) (two for ``attn.kv``: key, value)."""
    if m := re.fullmatch(r'stages\.(\d+)\.blocks\.(\d+)\.(.+)', key):
        module, leaf = _split(m[3])
        block = layout.block.format(i=m[1], j=m[2])
        if module == 'attn.kv':
            return [f'{block}{layout.qkv}{part}{leaf}' for part in ('key', 'value')]
        if module in layout.block_names:
            return [block + layout.block_names[module] + leaf]
    elif m := re.fullmatch(r'stages\.(\d+)\.(.+)', key):
        module, leaf = _split(m[2])
        if module in layout.stage_names:
            return [layout.stage.format(i=m[1]) + layout.stage_names[module] + leaf]
    raise CheckpointError(f'{key!r} has no place in transformers\' PVT v{layout.version} layout')


def _pvt_mm_name(layout: Layout, name: str) -> tuple[str, str | None]:
    """A (prefix-free) transformers key -> (pvt_mm key, ``'key'``/``'value'`` for the two
    halves of ``attn.kv``, else None). Raises KeyError when the key has no place."""
    if m := layout.block_re.fullmatch(name):
        module, leaf = _split(m['rest'])
        block = f'stages.{m["i"]}.blocks.{m["j"]}.'
        for part in ('key', 'value'):
            if module == layout.qkv + part:
                return f'{block}attn.kv{leaf}', part
        inverse = {v: k for k, v in layout.block_names.items()}
        return block + inverse[module] + leaf, None
    if m := layout.stage_re.fullmatch(name):
        module, leaf = _split(m['rest'])
        inverse = {v: k for k, v in layout.stage_names.items()}
        return f'stages.{m["i"]}.{inverse[module]}{leaf}', None
    raise KeyError(name)


def _expected_keys(layout: Layout, out: Mapping[str, Any]) -> list[str]:
    """Every pvt_mm key a complete checkpoint of the structure seen in ``out`` holds: 4
    stages, blocks 0..last seen, q/kv biases if any block has them, a reduction (sr + norm) in
    a stage's blocks if any of its blocks has one."""
    keys = []
    qkv_bias = any(k.endswith('attn.q.bias') or k.endswith('attn.kv.bias') for k in out)
    for i in range(NUM_STAGES):
        stage = f'stages.{i}.'
        keys += [stage + f'patch_embed.{m}.{p}' for m in ('proj', 'norm')
                 for p in ('weight', 'bias')]
        keys += ([stage + 'pos_embed'] if layout.version == 1
                 else [stage + 'norm.weight', stage + 'norm.bias'])
        depth = 1 + max((int(m[1]) for k in out
                         if (m := re.match(rf'stages\.{i}\.blocks\.(\d+)\.', k))), default=0)
        reduces = any(re.match(rf'stages\.{i}\.blocks\.\d+\.attn\.(?:sr|norm)\.', k) for k in out)
        modules = ['norm1', 'norm2', 'attn.proj', 'mlp.fc1', 'mlp.fc2']
        modules += (['mlp.dwconv.dwconv'] * (layout.version == 2)
                    + ['attn.sr', 'attn.norm'] * reduces)
        for j in range(depth):
            block = f'{stage}blocks.{j}.'
            keys += [block + f'{m}.{p}' for m in modules for p in ('weight', 'bias')]
            keys += [block + f'attn.{m}.{p}' for m in ('q', 'kv')
                     for p in (('weight', 'bias') if qkv_bias else ('weight',))]
    return keys


def from_transformers(state_dict: Mapping[str, Any], log: bool = True) -> dict[str, Tensor]:
    """A transformers PVT state dict (any of the five model classes, with or without the
    ``pvt.`` / ``pvt_v2.`` prefix) -> pvt_mm's keys. Pure: new tensors only where query /
    key / value are fused or the cls slot is cut. Raises :class:`CheckpointError` naming
    unknown, missing and non-tensor keys (transformers' names). ``log``: say what was dropped."""
    layout = transformers_layout(state_dict)
    if layout is None:
        raise CheckpointError('not a transformers PVT state dict (no encoder.* keys)')
    out: dict[str, Tensor] = {}
    halves: dict[str, dict[str, Tensor]] = {}
    unknown, dropped, not_tensors = [], [], []
    for key, value in state_dict.items():
        name = _strip(layout, key)
        if layout.dropped.fullmatch(name):
            dropped.append(key)
            continue
        try:
            new_key, half = _pvt_mm_name(layout, name)
        except KeyError:
            unknown.append(key)
            continue
        if not isinstance(value, Tensor):
            not_tensors.append(key)
        elif half:
            halves.setdefault(new_key, {})[half] = value
        elif new_key == f'stages.{NUM_STAGES - 1}.pos_embed' and value.dim() == 3:
            out[new_key] = value[:, 1:]  # v1: the cls token's slot comes first
        else:
            out[new_key] = value
    for new_key, parts in halves.items():
        if len(parts) == 2:
            out[new_key] = torch.cat((parts['key'], parts['value']))
    present = {_strip(layout, key) for key in state_dict}
    missing = [name for k in _expected_keys(layout, {**out, **halves}) if k not in out
               for name in _hf_names(layout, k) if name not in present]
    problems = []
    for what, keys in (('unknown', unknown), ('missing', missing),
                       ('non-tensor', not_tensors)):
        if keys:
            problems.append(f'{len(keys)} {what} key(s): {_listing(keys)}')
    if problems:
        raise CheckpointError(f'cannot convert the transformers PVT v{layout.version} '
                              f'checkpoint: ' + '; '.join(problems))
    if dropped and log:
        slot = ' and the cls slot of stage 4\'s position embeddings' if layout.version == 1 else ''
        print_log(f'transformers PVT v{layout.version} checkpoint: dropped {_listing(dropped)}'
                  f'{slot} (not backbone parameters)', logger='current')
    return out


def classifier_parts(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """The classifier's parameters in the official names (``cls_token``, ``cls_pos_embed``
    (1, 1, C), ``norm.*``, ``head.*``, those present) of a transformers, official or pvt_mm
    (timm classifier) state dict; the backbone keys are left to the conversion."""
    layout = transformers_layout(state_dict)
    sd = {(_strip(layout, k) if layout else k): v for k, v in state_dict.items()}
    if layout is None:
        parts = {k: sd[k] for k in ('cls_token', 'cls_pos_embed', 'norm.weight', 'norm.bias',
                                    'head.weight', 'head.bias') if k in sd}
        pos4 = sd.get('pos_embed4')
        if isinstance(pos4, Tensor) and 'cls_pos_embed' not in parts:
            n = pos4.shape[1]
            if math.isqrt(n - 1) ** 2 == n - 1 and math.isqrt(n) ** 2 != n:
                parts['cls_pos_embed'] = pos4[:, :1]
        return parts
    names = {'classifier.weight': 'head.weight', 'classifier.bias': 'head.bias'}
    if layout is V1:
        stage4 = layout.stage.format(i=NUM_STAGES - 1)
        names.update({stage4 + 'cls_token': 'cls_token', 'encoder.layer_norm.weight':
                      'norm.weight', 'encoder.layer_norm.bias': 'norm.bias'})
        if isinstance(pos4 := sd.get(stage4 + 'position_embeddings'), Tensor):
            sd['cls_pos_embed'], names['cls_pos_embed'] = pos4[:, :1], 'cls_pos_embed'
    return {new: sd[old] for old, new in names.items() if old in sd}


# ---- pvt_mm -> transformers ----------------------------------------------------------------
def _plain(values: Iterable[float]) -> list[int | float]:
    return [int(v) if float(v).is_integer() else float(v) for v in values]


def to_transformers(state_dict: Mapping[str, Tensor], spec: PVTArch,
                    classifier: Mapping[str, Tensor] | None = None
                    ) -> tuple[dict[str, Tensor], dict[str, Any], list[str]]:
    """A pvt_mm state dict of variant ``spec`` (+ official-named ``classifier`` parts) ->
    (transformers state dict, its ``config.json`` dict, notes). With ``head.*`` the layout is
    ``Pvt(V2)ForImageClassification``'s, else ``Pvt(V2)Model``'s. v1's ``PvtModel`` also holds
    a cls token, its position slot and a final norm: taken from ``classifier`` when there,
    else neutral (zeros; unit norm), each named in the notes."""
    layout = V1 if spec.version == 1 else V2
    classifier = dict(classifier or {})
    head = 'head.weight' in classifier
    prefix = layout.prefix if head else ''
    out: dict[str, Tensor] = {}
    notes: list[str] = []
    for key, value in state_dict.items():
        names = _hf_names(layout, key)
        values = value.chunk(2) if len(names) == 2 else (value,)
        out.update((prefix + n, v.clone()) for n, v in zip(names, values))
    stage0 = state_dict['stages.0.patch_embed.proj.weight']
    dim = spec.embed_dims[-1]
    image_size = None
    if layout is V1:
        n = state_dict['stages.0.pos_embed'].shape[1]
        if math.isqrt(n) ** 2 != n:
            raise CheckpointError(f'stage 1\'s position embeddings hold {n} positions, not a '
                                  'square grid: transformers\' PvtConfig has one square image_size')
        image_size = 4 * math.isqrt(n)
        stage4 = prefix + layout.stage.format(i=NUM_STAGES - 1)
        neutral = {'cls_token': torch.zeros(1, 1, dim), 'cls_pos_embed': torch.zeros(1, 1, dim),
                   'norm.weight': torch.ones(dim), 'norm.bias': torch.zeros(dim)}
        filled = [k for k in neutral if k not in classifier]
        parts = {**neutral, **classifier}
        if filled:
            notes.append(f'PvtModel runs a cls token through stage 4; the source has no '
                         f'{", ".join(filled)}: written as zeros / a unit norm')
        pos = out[stage4 + 'position_embeddings']
        out[stage4 + 'position_embeddings'] = torch.cat((parts['cls_pos_embed'].to(pos), pos), 1)
        out[stage4 + 'cls_token'] = parts['cls_token'].clone()
        out[prefix + 'encoder.layer_norm.weight'] = parts['norm.weight'].clone()
        out[prefix + 'encoder.layer_norm.bias'] = parts['norm.bias'].clone()
    if head:
        out['classifier.weight'] = classifier['head.weight'].clone()
        out['classifier.bias'] = classifier['head.bias'].clone()
    config = hf_config(spec, num_channels=stage0.shape[1], image_size=image_size,
                       qkv_bias='stages.0.blocks.0.attn.q.bias' in state_dict,
                       num_labels=classifier['head.weight'].shape[0] if head else None)
    return out, config, notes


def hf_config(spec: PVTArch, num_channels: int = 3, image_size: int | None = None,
              qkv_bias: bool = True, num_labels: int | None = None) -> dict[str, Any]:
    """transformers' ``config.json`` for variant ``spec`` (written by hand: transformers is
    not needed to write a folder it can load)."""
    layout = V1 if spec.version == 1 else V2
    config = dict(
        architectures=[layout.architectures[num_labels is not None]],
        model_type=layout.model_type, hidden_sizes=list(spec.embed_dims),
        depths=list(spec.depths), num_attention_heads=list(spec.num_heads),
        mlp_ratios=_plain(spec.mlp_ratios), num_encoder_blocks=NUM_STAGES,
        patch_sizes=layout.defaults['patch_sizes'], strides=layout.defaults['strides'],
        num_channels=num_channels, hidden_act='gelu', layer_norm_eps=HF_LN_EPS,
        qkv_bias=qkv_bias, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0, initializer_range=0.02)
    if layout is V1:
        config.update(sequence_reduction_ratios=list(spec.sr_ratios),
                      image_size=image_size or layout.defaults['image_size'])
    else:
        config.update(sr_ratios=list(spec.sr_ratios), linear_attention=spec.linear)
    if num_labels is not None:
        config['num_labels'] = num_labels
    return config
