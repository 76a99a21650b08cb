"""transformers folders (``save_pretrained`` / hub snapshots): ``config.json`` (the variant:
hidden sizes, depths, heads, reduction and MLP ratios, ``linear_attention``) and
``model.safetensors`` (or ``pytorch_model.bin``); the key layout is
:mod:`pvt_mm.loading.convert_hf`'s.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import Tensor

from ..arch import ARCHS, NUM_STAGES, PVTArch
from .checkpoint import WEIGHTS_NAMES, atomic_path, folder_weights, write_checkpoint
from .convert_hf import CONFIG_NAME, LAYOUTS, V1, _plain, to_transformers
from .errors import CheckpointError

__all__ = ['folder_weights', 'read_hf_config', 'arch_from_config', 'check_folder_variant',
           'describe', 'same_variant', 'infer_arch', 'write_transformers_folder']


MAX_CONFIG_BYTES = 1 << 20  # transformers' PVT config.json: about 1 KB
# config.json fields that size the model: per-stage lists, each value an int in these bounds
SIZE_FIELDS = {'hidden_sizes': 8192, 'depths': 256, 'num_attention_heads': 256,
               'sr_ratios': 64, 'sequence_reduction_ratios': 64}
MAX_MLP_RATIO = 64


def read_hf_config(folder: str | os.PathLike) -> dict[str, Any]:
    """``folder/config.json`` as a dict; unreadable, oversized or too deeply nested JSON, or
    numbers Python will not parse, raise CheckpointError naming it."""
    path = Path(folder) / CONFIG_NAME
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise CheckpointError(f'{path} holds {path.stat().st_size} bytes: not a PVT '
                                  f'config.json (about 1 KB; at most {MAX_CONFIG_BYTES})')
        config = json.loads(path.read_text())
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f'{path} is not a PVT config.json: its JSON is nested too '
                              'deeply to read') from None
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError, huge ints
        raise CheckpointError(f'{path} is not a readable config.json: {e}') from None
    if not isinstance(config, dict):
        raise CheckpointError(f'{path} is not a JSON object')
    return config


def _check_sizes(get: Any, source: str) -> None:
    """The fields that size the model: lists of one int per stage within bounds (and MLP
    ratios: numbers), else CheckpointError naming the field; nothing is built before."""
    for key, bound in SIZE_FIELDS.items():
        value = get(key)
        if value is None and key not in ('sr_ratios', 'sequence_reduction_ratios'):
            raise CheckpointError(f'{source}: {key} is missing')
        if value is None:
            continue
        if not (isinstance(value, list) and len(value) == NUM_STAGES
                and all(type(v) is int and 1 <= v <= bound for v in value)):
            raise CheckpointError(f'{source}: {key} must list {NUM_STAGES} integers in 1..'
                                  f'{bound} (one per stage), got {str(value)[:60]}')
    ratios = get('mlp_ratios')
    if not (isinstance(ratios, list) and len(ratios) == NUM_STAGES and all(
            type(v) in (int, float) and 0 < v <= MAX_MLP_RATIO for v in ratios)):
        raise CheckpointError(f'{source}: mlp_ratios must list {NUM_STAGES} numbers in (0, '
                              f'{MAX_MLP_RATIO}], got {str(ratios)[:60]}')
    if not isinstance(get('linear_attention', False), bool):
        raise CheckpointError(f'{source}: linear_attention must be true or false, got '
                              f'{str(get("linear_attention"))[:30]}')


def arch_from_config(config: Mapping[str, Any], source: str = CONFIG_NAME) -> PVTArch:
    """transformers' PvtConfig / PvtV2Config dict -> the variant (missing fields take
    transformers' defaults). Settings pvt_mm does not build, values of the wrong type or out
    of bounds raise CheckpointError naming the field."""
    model_type = config.get('model_type')
    layout = {lay.model_type: lay for lay in LAYOUTS}.get(
        model_type if isinstance(model_type, str) else None)
    if layout is None:
        raise CheckpointError(f'{source}: model_type {str(model_type)[:40]!r} is not '
                              'transformers\' PVT (pvt or pvt_v2)')
    get = {**layout.defaults, **config}.get
    fixed = [f'{k}={str(get(k))[:30]} (PVT: {layout.defaults[k]!r})'
             for k in ('num_encoder_blocks', 'patch_sizes', 'strides', 'hidden_act')
             if type(get(k)) is not type(layout.defaults[k]) or get(k) != layout.defaults[k]]
    if fixed:
        raise CheckpointError(f'{source}: not the PVT architecture: {", ".join(fixed)}')
    _check_sizes(get, source)
    try:
        return PVTArch(layout.version, tuple(get('hidden_sizes')), tuple(get('depths')),
                       tuple(get('num_attention_heads')),
                       tuple(get('sequence_reduction_ratios' if layout is V1 else 'sr_ratios')),
                       tuple(get('mlp_ratios')), bool(get('linear_attention', False)))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f'{source}: {e}') from None


def same_variant(a: PVTArch, b: PVTArch) -> bool:
    """Equal settings; linear (li) attention ignores the reduction ratios (as transformers)."""
    if a.linear and b.linear:
        return replace(a, sr_ratios=b.sr_ratios) == b
    return a == b


def describe(spec: PVTArch) -> str:
    """``PVTv2 b2`` (the table's name) or ``PVT custom (hidden sizes ..., ...)``."""
    name = next((n for n, a in ARCHS.items() if same_variant(a, spec)), None)
    kind = spec.backbone_type
    if name:
        return f'{kind} {name}'
    return (f'{kind} custom (hidden sizes {list(spec.embed_dims)}, depths {list(spec.depths)}, '
            f'heads {list(spec.num_heads)}, sr {list(spec.sr_ratios)}, mlp '
            f'{_plain(spec.mlp_ratios)}{", linear" if spec.linear else ""})')


def check_folder_variant(source: str | os.PathLike, spec: PVTArch, model: str) -> None:
    """When ``source`` is a folder with a ``config.json``: raise CheckpointError naming both
    variants unless it names ``spec`` (``model``: how to call the model, ``PVTv2 (b0)``)."""
    folder = Path(source).expanduser()
    if not (folder.is_dir() and (folder / CONFIG_NAME).is_file()):
        return
    held = arch_from_config(read_hf_config(folder), str(folder / CONFIG_NAME))
    if not same_variant(held, spec):
        shown = model if describe(spec).split()[-1] in model else f'{model}: {describe(spec)}'
        raise CheckpointError(f'{folder} holds {describe(held)} weights (its config.json), but '
                              f'the model is {shown}; build the model with the folder\'s variant '
                              'or load another folder')


def infer_arch(state_dict: Mapping[str, Tensor]) -> str:
    """The variant table's name for a pvt_mm state dict, from its shapes (heads do not show in
    shapes: the one table entry with these dims / depths / ratios); else CheckpointError."""
    sd = state_dict
    try:
        dims = tuple(sd[f'stages.{i}.patch_embed.proj.weight'].shape[0] for i in range(4))
        depths = tuple(1 + max(int(m[1]) for k in sd if (m := re.match(
            rf'stages\.{i}\.blocks\.(\d+)\.', k))) for i in range(NUM_STAGES))
        mlp = tuple(sd[f'stages.{i}.blocks.0.mlp.fc1.weight'].shape[0] / dims[i]
                    for i in range(NUM_STAGES))
    except (KeyError, ValueError):
        raise CheckpointError('cannot tell the variant: the checkpoint does not hold four '
                              'complete stages; name it (--arch)') from None
    sr = tuple(sd[k].shape[-1] if (k := f'stages.{i}.blocks.0.attn.sr.weight') in sd else 1
               for i in range(NUM_STAGES))
    version = 1 if 'stages.0.pos_embed' in sd else 2
    linear = (version == 2 and sr[-1] == 1
              and f'stages.{NUM_STAGES - 1}.blocks.0.attn.sr.weight' in sd)
    found = [n for n, a in ARCHS.items() if (a.version, a.embed_dims, a.depths, a.mlp_ratios,
             a.linear) == (version, dims, depths, mlp, linear) and (linear or a.sr_ratios == sr)]
    if len(found) != 1:
        raise CheckpointError(f'cannot tell the variant (v{version}, dims {list(dims)}, depths '
                              f'{list(depths)}) from the table{f": {found}" if found else ""}; '
                              'name it (--arch)')
    return found[0]


def write_transformers_folder(state_dict: Mapping[str, Tensor], out_dir: str | os.PathLike,
                              spec: PVTArch, classifier: Mapping[str, Tensor] | None = None
                              ) -> tuple[Path, dict[str, Any], list[str]]:
    """Write ``config.json`` + ``model.safetensors`` (each atomically) that transformers'
    ``from_pretrained`` loads. Returns (folder, config, notes)."""
    tensors, config, notes = to_transformers(state_dict, spec, classifier)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f'{out_dir} exists and is not a directory')
    out_dir.mkdir(parents=True, exist_ok=True)
    write_checkpoint(tensors, out_dir / WEIGHTS_NAMES[0], 'safetensors')
    with atomic_path(out_dir / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + '\n')
    return out_dir, config, notes
