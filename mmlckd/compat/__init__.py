"""Compatibility layer: current PyTorch with mmengine 0.10.7, and CPU DDP."""
from .dist import (CPUAwareDistributedDataParallel, adapt_cfg_for_cpu_dist,
                   dist_teardown, finalize_dist, init_cpu_dist)
from .safe_load import mmengine_safe_globals, register_safe_globals

register_safe_globals()

__all__ = [
    'mmengine_safe_globals', 'register_safe_globals',
    'init_cpu_dist', 'CPUAwareDistributedDataParallel',
    'adapt_cfg_for_cpu_dist', 'finalize_dist', 'dist_teardown'
]
