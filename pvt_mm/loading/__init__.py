"""The loading layer: reading, checking, converting and writing checkpoint files.

It knows checkpoints and the variant table (:mod:`pvt_mm.arch`), never modules: nothing here
imports :mod:`pvt_mm.models`, :mod:`pvt_mm.engine` or anything above them
(``tests/test_layers.py``). ``checkpoint`` reads files safely (``integrity``, ``safe_pickle``,
``safe_plain``, ``weights_unpickler``) and writes them atomically; ``convert`` /
``convert_hf`` map every supported key layout onto pvt_mm's; ``hf_folder`` reads and writes
transformers folders; ``state_check`` compares a state dict with a model's.
"""
from .checkpoint import (publish_checkpoint, read_checkpoint, remove_stale_temp_files,
                         resolve_checkpoint, use_safe_mmengine_loader, write_checkpoint)
from .convert import convert_pvt_checkpoint, unwrap_state_dict
from .convert_hf import from_transformers, to_transformers, transformers_layout
from .errors import CheckpointError
from .hf_folder import (arch_from_config, check_folder_variant, folder_weights, infer_arch,
                        read_hf_config, write_transformers_folder)
from .state_check import check_state_dict, model_name, state_dict_problems

__all__ = ['CheckpointError', 'read_checkpoint', 'resolve_checkpoint', 'write_checkpoint',
           'publish_checkpoint', 'remove_stale_temp_files', 'use_safe_mmengine_loader',
           'convert_pvt_checkpoint', 'unwrap_state_dict', 'transformers_layout',
           'from_transformers', 'to_transformers', 'read_hf_config', 'arch_from_config',
           'check_folder_variant', 'folder_weights', 'infer_arch', 'write_transformers_folder',
           'check_state_dict', 'state_dict_problems', 'model_name']
