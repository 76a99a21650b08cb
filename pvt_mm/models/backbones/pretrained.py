"""Pretrained weights into a backbone: resolve, read safely, convert, fit, load strictly.

The fitting is for a backbone built with ``in_channels != 3`` or with fewer stages
(``out_indices`` that stop early): only these two differences are fitted, each with a log
line; every other mismatch is left for the strict check to report.
"""
from __future__ import annotations

import os
import re

from mmengine.logging import print_log
from timm.models import adapt_input_conv
from torch import Tensor, nn

from ...arch import PVTArch
from ...loading.checkpoint import (check_state_dict, model_name, read_checkpoint,
                                   resolve_checkpoint)
from ...loading.convert import CheckpointError, convert_pvt_checkpoint
from ...loading.hf_folder import check_folder_variant

FIRST_CONV = 'stages.0.patch_embed.proj.weight'
PRETRAIN_CHANNELS = 3  # RGB: every published PVT checkpoint
_STAGE_KEY = re.compile(r'^stages\.(\d+)\.')


def adapt_in_channels(model: nn.Module, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A 3-channel first patch-embedding conv (O, 3, k, k) -> (O, in_channels, k, k) as timm's
    ``adapt_input_conv`` does: summed over the channels for 1, repeated and scaled by
    3 / in_channels for more. Returns ``state_dict`` unchanged when nothing needs adapting."""
    expected = model.state_dict().get(FIRST_CONV)
    weight = state_dict.get(FIRST_CONV)
    if expected is None or weight is None or weight.dim() != 4 \
            or weight.shape[1] != PRETRAIN_CHANNELS or expected.shape[1] == PRETRAIN_CHANNELS \
            or weight.shape[0] != expected.shape[0] or weight.shape[2:] != expected.shape[2:]:
        return state_dict
    in_ch = expected.shape[1]
    out = dict(state_dict)
    out[FIRST_CONV] = adapt_input_conv(in_ch, weight)
    rule = 'summed over its 3 channels' if in_ch == 1 else \
        f'repeated to {in_ch} channels and scaled by 3/{in_ch}'
    print_log(f'in_channels={in_ch}: the checkpoint\'s 3-channel {FIRST_CONV} was {rule} '
              '(timm adapt_input_conv)', logger='current')
    return out


def drop_unbuilt_stages(model: nn.Module, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the keys of stages the model does not build (those after its last
    ``out_indices`` entry), with a log line naming how many and which stages."""
    stages = getattr(model, 'stages', None)
    if stages is None:
        return state_dict
    built = len(stages)
    dropped = sorted({int(m[1]) for k in state_dict if (m := _STAGE_KEY.match(k))
                      and int(m[1]) >= built})
    if not dropped:
        return state_dict
    out = {k: v for k, v in state_dict.items()
           if not ((m := _STAGE_KEY.match(k)) and int(m[1]) >= built)}
    print_log(f'dropped {len(state_dict) - len(out)} checkpoint keys of stage(s) '
              f'{", ".join(map(str, dropped))}: not built with out_indices='
              f'{getattr(model, "out_indices", None)}', logger='current')
    return out


def fit_state_dict(model: nn.Module, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """:func:`drop_unbuilt_stages` then :func:`adapt_in_channels`."""
    return adapt_in_channels(model, drop_unbuilt_stages(model, state_dict))


def load_pretrained(model: nn.Module, source: str | os.PathLike, prefix: str | None = None
                    ) -> None:
    """Resolve, read safely, convert, fit (:func:`fit_state_dict`) and load ``source`` into
    ``model`` with ``strict=True``; any mismatch raises CheckpointError naming the file."""
    path = resolve_checkpoint(source)
    if isinstance(getattr(model, 'arch', None), PVTArch):  # a folder's config.json names one
        check_folder_variant(source, model.arch, model_name(model))
    if prefix and not prefix.endswith('.'):
        prefix += '.'  # as mmengine's Pretrained init: 'backbone' means 'backbone.'
    try:
        state_dict = convert_pvt_checkpoint(read_checkpoint(path), prefix=prefix)
    except CheckpointError as e:
        raise e if str(path) in str(e) else CheckpointError(f'{path}: {e}') from None
    state_dict = fit_state_dict(model, state_dict)  # in_channels != 3, stages not built
    check_state_dict(model, state_dict, source=path)
    model.load_state_dict(state_dict, strict=True)
    print_log(f'loaded pretrained {type(model).__name__} weights from {path}', logger='current')
