"""Running mmengine's Runner on CPU-only machines.

mmengine assumes CUDA in three places that matter here: ``init_dist`` calls
``torch.cuda.set_device``, the Runner gives DDP ``device_ids`` (a CUDA-only argument) and
``AmpOptimWrapper`` refuses to build without a GPU. These are the CPU counterparts. torch's
``SyncBatchNorm`` (mmseg's default norm) also needs a GPU once a process group exists.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as torch_dist
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.optim import OptimWrapper
from mmengine.registry import MODEL_WRAPPERS, OPTIM_WRAPPERS
from torch import nn

CPU_DIST_BACKEND = 'gloo'
CPU_AMP_DTYPE = torch.bfloat16  # the only dtype CPU autocast supports


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """:class:`MMDistributedDataParallel` for CPU processes: ignores ``device_ids``, which the
    Runner always passes but DDP accepts only for CUDA modules, and turns SyncBN layers into
    per-process BatchNorm (as mmengine does for non-distributed runs)."""

    def __init__(self, module: nn.Module, device_ids: Any = None, **kwargs: Any) -> None:
        if any(isinstance(m, nn.SyncBatchNorm) or type(m).__name__ == 'SyncBatchNorm'
               for m in module.modules()):
            print_log('SyncBN needs CUDA: on CPU each process normalizes with its own batch',
                      logger='current')
            module = revert_sync_batchnorm(module)
        super().__init__(module=module, device_ids=None, **kwargs)


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """Mixed precision on CPU: forward passes run under ``torch.autocast('cpu', bfloat16)``.

    bfloat16 keeps float32's exponent range, so unlike float16 it needs no loss scaling.

    Args:
        dtype: must be ``'bfloat16'`` (or ``torch.bfloat16``); kept for config compatibility
            with :class:`mmengine.optim.AmpOptimWrapper`.
        loss_scale: ignored (accepted so that ``AmpOptimWrapper`` settings can be reused).
        **kwargs: passed to :class:`mmengine.optim.OptimWrapper`.
    """

    def __init__(self, dtype: str | torch.dtype = 'bfloat16', loss_scale: Any = None,
                 **kwargs: Any) -> None:
        if dtype not in ('bfloat16', CPU_AMP_DTYPE):
            raise ValueError(f'CPU autocast supports only bfloat16, got dtype={dtype!r}')
        super().__init__(**kwargs)

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        with super().optim_context(model), torch.autocast('cpu', dtype=CPU_AMP_DTYPE):
            try:
                yield
            except RuntimeError as err:
                if 'BFloat16' not in str(err):
                    raise
                raise RuntimeError(
                    f'--amp on CPU: an op of this model has no bfloat16 CPU kernel ({err}). '
                    "mmcv's compiled ops (nms, RoIAlign, ...) take float32 only on CPU, so "
                    'two-stage detectors such as Mask R-CNN cannot train under CPU autocast; '
                    'train them without --amp') from err


def init_cpu_process_group(dist_cfg: dict | None = None) -> None:
    """Start the gloo process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``), as mmengine's ``init_dist('pytorch')`` does on GPUs.

    Args:
        dist_cfg: the config's ``env_cfg.dist_cfg``; ``timeout`` (seconds) is honoured.
    """
    if torch_dist.is_initialized():
        return
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
               if k not in os.environ]
    if missing:
        raise RuntimeError(f'--launcher pytorch needs the environment torchrun sets; missing '
                           f'{missing}. Start with tools/dist_train.sh or torchrun.')
    kwargs = {}
    timeout = (dist_cfg or {}).get('timeout')
    if timeout is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=timeout)
    torch_dist.init_process_group(backend=CPU_DIST_BACKEND, **kwargs)
