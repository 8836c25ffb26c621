"""Distributed training on machines without CUDA (gloo), for the same
launchers (torchrun, Slurm) that GPU clusters use.

mmengine 0.10.7's ``init_dist`` always calls ``torch.cuda.set_device`` and
wraps the model with ``device_ids=[LOCAL_RANK]``; both fail for CPU
processes. :func:`init_cpu_dist` initialises the process group with gloo
before the ``Runner`` does (the Runner then skips its own ``init_dist``), and
:class:`CPUAwareDistributedDataParallel` drops ``device_ids`` for CPU
modules. On CUDA machines neither changes anything.
"""
import os
import subprocess
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.distributed as torch_dist
from mmengine.model import MMDistributedDataParallel

from mmlckd.registry import MODEL_WRAPPERS

__all__ = ['init_cpu_dist', 'CPUAwareDistributedDataParallel',
           'adapt_cfg_for_cpu_dist', 'finalize_dist', 'dist_teardown']


def _slurm_env(port: Optional[int]) -> None:
    """Fill torch's env:// variables from Slurm's."""
    os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
    os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
    os.environ.setdefault('LOCAL_RANK', os.environ.get('SLURM_LOCALID', '0'))
    if 'MASTER_ADDR' not in os.environ:
        node_list = os.environ['SLURM_NODELIST']
        os.environ['MASTER_ADDR'] = subprocess.getoutput(
            f'scontrol show hostname {node_list} | head -n1')
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    os.environ.setdefault('MASTER_PORT', '29500')


def init_cpu_dist(launcher: str, port: Optional[int] = None) -> bool:
    """Initialise a gloo process group when CUDA is unavailable.

    Args:
        launcher: ``'none'``, ``'pytorch'`` (torchrun) or ``'slurm'``.
        port: master port for Slurm (else ``MASTER_PORT`` or 29500).

    Returns:
        True when this function initialised the process group.
    """
    if launcher == 'none' or torch.cuda.is_available() \
            or torch_dist.is_initialized():
        return False
    if launcher == 'slurm':
        _slurm_env(port)
    elif launcher != 'pytorch':
        raise ValueError(
            f'launcher {launcher!r} is not supported without CUDA; use '
            "'pytorch' (torchrun / tools/dist_train.sh) or 'slurm'.")
    for key in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        if key not in os.environ:
            raise RuntimeError(
                f'--launcher {launcher} needs the environment variable {key}; '
                'start the job with torchrun (tools/dist_train.sh) or srun '
                '(tools/slurm_train.sh).')
    torch_dist.init_process_group(backend='gloo')
    return True


@MODEL_WRAPPERS.register_module()
class CPUAwareDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that also wraps CPU modules (gloo).

    torch's DDP requires ``device_ids=None`` for CPU modules, while mmengine
    always passes ``[LOCAL_RANK]``. This wrapper drops ``device_ids`` when
    the module's parameters are not on a CUDA device.
    """

    def __init__(self, module, detect_anomalous_params: bool = False,
                 **kwargs):
        param = next(module.parameters(), None)
        if param is None or param.device.type != 'cuda':
            kwargs.pop('device_ids', None)
            kwargs.pop('output_device', None)
        super().__init__(
            module=module,
            detect_anomalous_params=detect_anomalous_params,
            **kwargs)


def adapt_cfg_for_cpu_dist(cfg) -> bool:
    """Make a config's distributed settings work without CUDA (in place):
    gloo backend, :class:`CPUAwareDistributedDataParallel`, and ``BN`` for
    ``SyncBN`` (:func:`mmlckd.utils.config.sync_bn_to_bn`, one log line).
    Returns whether it applied (a launcher and no CUDA)."""
    if torch.cuda.is_available() or cfg.get('launcher', 'none') == 'none':
        return False
    from mmlckd.utils.config import sync_bn_to_bn
    sync_bn_to_bn(cfg)
    env_cfg = cfg.setdefault('env_cfg', {})
    env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or {}
    if wrapper.get('type', 'MMDistributedDataParallel') in (
            'MMDistributedDataParallel',
            'mmengine.MMDistributedDataParallel'):
        wrapper = dict(wrapper)
        wrapper['type'] = 'mmlckd.CPUAwareDistributedDataParallel'
        wrapper.setdefault('broadcast_buffers', False)
        wrapper.setdefault('find_unused_parameters',
                           cfg.get('find_unused_parameters', False))
        cfg.model_wrapper_cfg = wrapper
    return True


def finalize_dist(success: bool = True) -> None:
    """Tear the default process group down before the interpreter exits.

    Without it, gloo's worker threads are destroyed during interpreter
    finalisation and a rank that finishes first can die with SIGABRT
    ("terminate called without an active exception"), failing the whole
    torchrun job after a successful run. On success all ranks first meet at
    a barrier, so no rank leaves while another still works (rank 0 writing
    the final checkpoint or the exported student). After an error the
    barrier is skipped: the other ranks may never reach it.
    """
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return
    try:
        if success:
            torch_dist.barrier()
    finally:
        torch_dist.destroy_process_group()


@contextmanager
def dist_teardown() -> Iterator[None]:
    """Run a job's body, then :func:`finalize_dist`: with the barrier when
    the body succeeded, without it when it raised (re-raised)."""
    try:
        yield
    except BaseException:
        finalize_dist(success=False)
        raise
    finalize_dist()
