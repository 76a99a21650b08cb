"""Checkpoint conversion: one pure function from any supported layout to pvt_mm's.

Supported inputs (raw state dicts, or wrapped in ``state_dict`` / ``model``; a ``module.``
prefix is dropped; from a whole detector/segmentor only the ``backbone.`` keys are taken):

* official whai362/PVT (``patch_embed1.proj``, ``pos_embed1``, ``block1.0.attn.q``, ``norm1``);
* mmdet's ``pvt_convert`` layout (``layers.0.0.projection``, ``layers.0.1.1.attn.attn.in_proj_weight``,
  ``ffn.layers.0`` as 1x1 convs, ``layers.0.2``);
* timm ``pvt_v2`` (``patch_embed``/``stages.0.downsample``, ``mlp.dwconv``);
* Hugging Face transformers' ``PvtModel`` / ``PvtV2Model`` and their classifiers / backbone
  (``encoder.layers.0.blocks.0.attention.query``; :mod:`pvt_mm.loading.convert_hf`);
* pvt_mm itself (so the conversion is idempotent).

The classifier ``head``, ``cls_token`` (and pvt_mm's timm classifier's ``cls_pos_embed``) and final
``norm`` are dropped and the cls slot of v1's
``pos_embed4`` is stripped. Every other key must be placed, or :class:`CheckpointError` names it.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torch import Tensor

from .convert_hf import from_transformers, transformers_layout
from .errors import CheckpointError
from .errors import listing as _listing
from .state_check import check_dense

__all__ = ['CheckpointError', 'convert_pvt_checkpoint', 'unwrap_state_dict']

Pairs = Iterator[tuple[str, Tensor]]

# Parameter paths inside one block, with pvt_mm's (= the official) names.
BLOCK_PARAM = (r'(?:norm1|norm2|attn\.(?:q|kv|proj|sr|norm)|mlp\.(?:fc1|fc2|dwconv\.dwconv))'
               r'\.(?:weight|bias)')
DROPPED = re.compile(r'^(?:head\..*|cls_token|cls_pos_embed|norm\.(?:weight|bias))$')
WRAPPERS = ('state_dict', 'model')


def _strip_cls_slot(v: Tensor) -> Tensor:
    """(1, 1 + h*w, C) with a leading cls slot -> (1, h*w, C); square grids are kept."""
    n = v.shape[1]
    if math.isqrt(n) ** 2 != n and math.isqrt(n - 1) ** 2 == n - 1:
        return v[:, 1:]
    return v


def _linear_weight(v: Tensor) -> Tensor:
    """mmdet stores MLP linears as 1x1 convs: (out, in, 1, 1) -> (out, in)."""
    return v.flatten(1) if v.dim() == 4 else v


Rule = tuple[re.Pattern, Callable[[re.Match, Tensor, 'Context'], Pairs]]


class Context:
    """Facts about the whole input a key's rule may need (mmdet's block offsets)."""

    def __init__(self, keys: set[str]) -> None:
        self.mmdet_pos_stages = {int(k.split('.')[1]) for k in keys
                                 if re.fullmatch(r'layers\.\d\.1\.0\.pos_embed', k)}


def _rename(template: str, value_fn: Callable[[Tensor], Tensor] | None = None):
    def rule(m: re.Match, v: Tensor, ctx: Context) -> Pairs:
        yield template.format(*m.groups(), s=int(m.group(1)) - 1), (value_fn or (lambda t: t))(v)
    return rule


def _mmdet_block(m: re.Match, v: Tensor, ctx: Context) -> Pairs:
    stage, idx, rest = int(m.group(1)), int(m.group(2)), m.group(3)
    prefix = f'stages.{stage}.blocks.{idx - (stage in ctx.mmdet_pos_stages)}.'
    if r := re.fullmatch(r'attn\.attn\.in_proj_(weight|bias)', rest):
        c = v.shape[0] // 3
        yield prefix + f'attn.q.{r.group(1)}', v[:c]
        yield prefix + f'attn.kv.{r.group(1)}', v[c:]
        return
    table = ((r'attn\.attn\.out_proj\.(weight|bias)', 'attn.proj.{}', None),
             (r'(norm1|norm2|attn\.sr|attn\.norm)\.(weight|bias)', '{}.{}', None),
             (r'ffn\.layers\.0\.(weight|bias)', 'mlp.fc1.{}', _linear_weight),
             (r'ffn\.layers\.1\.(weight|bias)', 'mlp.dwconv.dwconv.{}', None),
             (r'ffn\.layers\.[34]\.(weight|bias)', 'mlp.fc2.{}', _linear_weight))
    for pattern, template, fn in table:
        if r := re.fullmatch(pattern, rest):
            yield prefix + template.format(*r.groups()), (fn or (lambda t: t))(v)
            return
    raise CheckpointError(f'cannot place mmdet key {m.group(0)!r}')


RULES: tuple[Rule, ...] = tuple((re.compile(p), f) for p, f in (
    # pvt_mm (identity) and timm's shared block/norm names
    (r'^(stages\.[0-3]\.(?:patch_embed\.(?:proj|norm)\.(?:weight|bias)|pos_embed|'
     rf'norm\.(?:weight|bias)|blocks\.\d+\.{BLOCK_PARAM}))$', lambda m, v, c: iter([(m[1], v)])),
    # official whai362/PVT
    (r'^patch_embed([1-4])\.(proj|norm)\.(weight|bias)$', _rename('stages.{s}.patch_embed.{1}.{2}')),
    (r'^pos_embed([1-4])$', _rename('stages.{s}.pos_embed', _strip_cls_slot)),
    (rf'^block([1-4])\.(\d+)\.({BLOCK_PARAM})$', _rename('stages.{s}.blocks.{1}.{2}')),
    (r'^norm([1-4])\.(weight|bias)$', _rename('stages.{s}.norm.{1}')),
    # timm pvt_v2
    (r'^patch_embed\.(proj|norm)\.(weight|bias)$',
     lambda m, v, c: iter([(f'stages.0.patch_embed.{m[1]}.{m[2]}', v)])),
    (r'^stages\.([0-3])\.downsample\.(proj|norm)\.(weight|bias)$',
     lambda m, v, c: iter([(f'stages.{m[1]}.patch_embed.{m[2]}.{m[3]}', v)])),
    (r'^stages\.([0-3])\.blocks\.(\d+)\.mlp\.dwconv\.(weight|bias)$',
     lambda m, v, c: iter([(f'stages.{m[1]}.blocks.{m[2]}.mlp.dwconv.dwconv.{m[3]}', v)])),
    # mmdet pvt_convert
    (r'^layers\.([0-3])\.0\.projection\.(weight|bias)$',
     lambda m, v, c: iter([(f'stages.{m[1]}.patch_embed.proj.{m[2]}', v)])),
    (r'^layers\.([0-3])\.0\.norm\.(weight|bias)$',
     lambda m, v, c: iter([(f'stages.{m[1]}.patch_embed.norm.{m[2]}', v)])),
    (r'^layers\.([0-3])\.1\.0\.pos_embed$',
     lambda m, v, c: iter([(f'stages.{m[1]}.pos_embed', _strip_cls_slot(v))])),
    (r'^layers\.([0-3])\.1\.(\d+)\.(.+)$', _mmdet_block),
    (r'^layers\.([0-3])\.2\.(weight|bias)$',
     lambda m, v, c: iter([(f'stages.{m[1]}.norm.{m[2]}', v)])),
))


def unwrap_state_dict(checkpoint: Mapping[str, Any], prefix: str | None = None
                      ) -> dict[str, Any]:
    """Take the state dict out of a checkpoint: unwrap ``state_dict``/``model``, drop
    ``module.``, keep only keys under ``prefix`` (default: ``backbone.`` when present)."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f'a checkpoint must be a dict, got {type(checkpoint).__name__}')
    sd: Mapping[str, Any] = checkpoint
    for wrapper in WRAPPERS:
        if isinstance(sd.get(wrapper), Mapping):
            sd = sd[wrapper]
            break
    sd = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in sd.items()}
    if prefix is None and any(k.startswith('backbone.') for k in sd):
        prefix = 'backbone.'
    if prefix:
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not sd:
            raise CheckpointError(f'the checkpoint has no keys under prefix {prefix!r}')
    return dict(sd)


def convert_pvt_checkpoint(checkpoint: Mapping[str, Any], prefix: str | None = None
                           ) -> dict[str, Tensor]:
    """Any supported PVT checkpoint -> a pvt_mm state dict (pure: the input is not changed;
    idempotent: converting the result again gives it back).

    Raises:
        CheckpointError: naming every key that cannot be placed, non-tensor values, tensors
            without dense data (meta, sparse, quantized), and keys that two inputs would both
            map to.
    """
    sd = unwrap_state_dict(checkpoint, prefix)
    check_dense(sd)  # meta / sparse / quantized values: named before any conversion
    if transformers_layout(sd) is not None:
        sd = from_transformers(sd)
    ctx = Context(set(sd))
    out: dict[str, Tensor] = {}
    unplaced, clashes, not_tensors = [], [], []
    for key, value in sd.items():
        if DROPPED.match(key):
            continue
        if not isinstance(value, Tensor):
            not_tensors.append(key)
            continue
        for pattern, rule in RULES:
            if m := pattern.match(key):
                try:
                    pairs = list(rule(m, value, ctx))
                except CheckpointError:
                    pairs = []
                break
        else:
            pairs = []
        if not pairs:
            unplaced.append(key)
        for new_key, new_value in pairs:
            if new_key in out:
                clashes.append(f'{key} -> {new_key}')
            out[new_key] = new_value
    problems = []
    if unplaced:
        problems.append(f'{len(unplaced)} key(s) that are not PVT backbone parameters in any '
                        f'known layout: {_listing(unplaced)}')
    if not_tensors:
        problems.append(f'{len(not_tensors)} key(s) whose values are not tensors: '
                        f'{_listing(not_tensors)}')
    if clashes:
        problems.append(f'keys that map to the same parameter (mixed layouts?): '
                        f'{_listing(clashes)}')
    if problems:
        raise CheckpointError('cannot convert the checkpoint: ' + '; '.join(problems))
    if not out:
        raise CheckpointError('the checkpoint holds no PVT backbone parameters')
    return out


