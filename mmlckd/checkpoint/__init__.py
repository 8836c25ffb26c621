"""Checkpoints: writing them safely (:mod:`.io`) and reading them with one
checked sequence (:mod:`.load`)."""
from .io import (CheckpointError, atomic_torch_save, atomic_write, fsync_dir,
                 sha256_file, sidecar_path, verify_checksum, write_checksum)
from .load import (check_checkpoint_file, check_model_checkpoint,
                   compare_state_dicts, describe_mismatch,
                   is_distillation_state, load_checked, safe_torch_load,
                   state_dict_from, strip_prefix)

__all__ = [
    'CheckpointError', 'atomic_write', 'atomic_torch_save', 'fsync_dir',
    'sha256_file', 'sidecar_path', 'verify_checksum', 'write_checksum',
    'check_checkpoint_file', 'check_model_checkpoint', 'compare_state_dicts',
    'describe_mismatch', 'is_distillation_state', 'load_checked',
    'safe_torch_load', 'state_dict_from', 'strip_prefix'
]
