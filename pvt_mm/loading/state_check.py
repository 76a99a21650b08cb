"""Comparing a checkpoint's state dict with a model: keys, shapes, and tensors that hold data.

A meta, sparse, quantized or nested tensor (or a tensor subclass) of the right shape passes a
shape check, and a non-strict copy then only warns, leaving the parameter at its random
initial value; :func:`tensor_problem` names such values so every load path refuses them.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .errors import listing as _listing

__all__ = ['tensor_problem', 'dense_problems', 'check_dense', 'state_dict_problems',
           'model_name', 'check_state_dict']


def tensor_problem(value: Any, floating: bool = False) -> str | None:
    """Why ``value`` is not a dense tensor with data (``floating``: of a floating dtype), or
    None when it is one."""
    if not isinstance(value, torch.Tensor):
        return f'a {type(value).__name__}, not a tensor'
    if type(value) not in (torch.Tensor, nn.Parameter):
        return f'a {type(value).__name__} (a tensor subclass)'
    if value.is_meta:
        return 'a meta tensor (a shape without data)'
    if value.layout != torch.strided:
        return f'a {str(value.layout).replace("torch.", "")} tensor (not dense)'
    if value.is_quantized:
        return f'a quantized {str(value.dtype).replace("torch.", "")} tensor'
    if value.is_nested:
        return 'a nested tensor'
    if floating and not (value.is_floating_point() or value.is_complex()):
        return f'a {str(value.dtype).replace("torch.", "")} tensor where the model holds ' \
               'floating-point values'
    return None


def dense_problems(state_dict: Mapping[str, Any],
                   expected: Mapping[str, torch.Tensor] | None = None) -> list[str]:
    """``'key: a meta tensor ...'`` for every value of ``state_dict`` that is not a dense
    tensor with data (only the keys of ``expected`` when given, which also sets whether a
    floating dtype is needed); non-tensor values are left to the key checks."""
    out = []
    for key, value in state_dict.items():
        if expected is not None and key not in expected or not isinstance(value, torch.Tensor):
            continue
        floating = expected is not None and expected[key].is_floating_point()
        problem = tensor_problem(value, floating)
        if problem:
            out.append(f'{key} is {problem}')
    return out


def check_dense(state_dict: Mapping[str, Any], source: Any = None,
                expected: Mapping[str, torch.Tensor] | None = None) -> None:
    """Raise CheckpointError (one line) naming the first values that hold no dense data."""
    problems = dense_problems(state_dict, expected)
    if problems:
        where = f'{source}: ' if source is not None else ''
        raise CheckpointError(f'{where}{_listing(problems, 3)}; the weights must be dense '
                              'tensors with data')


def state_dict_problems(expected: Mapping[str, torch.Tensor],
                        state_dict: Mapping[str, Any]) -> list[str]:
    """Missing, unexpected and mis-shaped keys of ``state_dict`` against ``expected`` (the
    first few of each, with counts); empty when they match."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}'
              for k, v in state_dict.items()
              if k in expected and hasattr(v, 'shape') and v.shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing key(s): {_listing(missing, 5)}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected key(s): {_listing(unexpected, 5)}')
    if shapes:
        problems.append(f'{len(shapes)} shape mismatch(es): {_listing(shapes, 5)}')
    return problems


def model_name(model: nn.Module) -> str:
    """``PVTv2 (b0)``: the class and, where known, the variant by its table name."""
    arch = getattr(model, 'arch_name', None)
    if arch is None and isinstance(getattr(model, 'arch', None), str):
        arch = model.arch
    return f'{type(model).__name__}{f" ({arch})" if arch else ""}'


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor],
                     source: Any = None) -> None:
    """Raise CheckpointError naming the file, the model, and missing, unexpected and
    mis-shaped keys, or values that hold no dense data."""
    expected = model.state_dict()
    check_dense(state_dict, source if source is not None else 'checkpoint', expected)
    problems = state_dict_problems(expected, state_dict)
    if problems:
        where = f'{source} ' if source is not None else 'checkpoint '
        raise CheckpointError(f'{where}does not match {model_name(model)}: '
                              + '; '.join(problems))
