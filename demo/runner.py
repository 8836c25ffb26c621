"""Training / testing one demo model through mmengine's Runner."""
import gc
import os.path as osp
import time
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.runner import Runner

from mmlckd.engine.hooks import LipschitzMonitorHook
from mmlckd.testing import (drop_validation, iter_schedule,
                            set_voc_data_root, single_process_loaders)
from mmlckd.cli.train_cfg import prepare_distill_cfg
from .tasks import DemoTask, config_dir

__all__ = ['DemoRunner', 'build_cfg', 'train_and_test']


class DemoRunner(Runner):
    """mmengine's Runner, minus the multi-page environment / config dump at
    start-up (the full config is still written to the work dir)."""

    def _log_env(self, env_cfg: dict) -> None:
        self.logger.info(
            f'config {osp.basename(self.cfg.filename or "?")} | seed '
            f'{self.seed} | work_dir {self.work_dir} | torch threads '
            f'{torch.get_num_threads()}')

    def get_hooks_info(self) -> str:
        # one line instead of mmengine's per-stage hook table
        return ', '.join(type(h).__name__ for h in self.hooks)


def _set_schedule(cfg: Config, iters: int) -> None:
    """``iters`` iterations: linear warm-up (<= 50 iterations, 10%) then
    cosine decay of the config's learning rate; no validation during
    training (the demo tests once at the end)."""
    warmup = max(1, min(50, iters // 10))
    iter_schedule(cfg, iters)
    lr = cfg.optim_wrapper.optimizer.lr
    scheds = [dict(type='LinearLR', start_factor=0.01, by_epoch=False,
                   begin=0, end=warmup)]
    if iters > warmup:
        scheds.append(dict(type='CosineAnnealingLR', by_epoch=False,
                           begin=warmup, end=iters, eta_min=lr * 0.01))
    cfg.param_scheduler = scheds


def build_cfg(task: DemoTask,
              role: str,
              *,
              seed: int,
              iters: int,
              work_dir: str,
              data_root: str,
              teacher_ckpt: Optional[str] = None,
              log_interval: int = 25,
              quick: bool = False) -> Config:
    """The config of ``role`` (teacher / student / london) of ``task`` with
    the demo's data root, seed, schedule and work dir."""
    cfg = Config.fromfile(osp.join(config_dir(), task.configs[role]))
    set_voc_data_root(cfg, data_root)
    drop_validation(cfg)  # the demo tests once, with runner.test()
    _set_schedule(cfg, iters)
    cfg.randomness = dict(seed=int(seed), deterministic=False)
    cfg.work_dir = work_dir
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=log_interval)
    cfg.log_processor = dict(type='LogProcessor', window_size=log_interval,
                             by_epoch=False)
    cfg.default_hooks.checkpoint = dict(
        type='mmlckd.SafeCheckpointHook', by_epoch=False, interval=iters,
        max_keep_ckpts=1, save_optimizer=False, save_param_scheduler=False)
    # one visualizer instance per run (a fixed name would be shared by all
    # runs of this process and write to the first run's folder)
    cfg.visualizer.pop('name', None)
    if quick:  # smoke run: small batches, no worker processes
        single_process_loaders(cfg, batch_size=2)
    if role == 'london':
        if teacher_ckpt is None:
            raise ValueError('the LONDON student needs teacher_ckpt')
        cfg.model.teacher.checkpoint = teacher_ckpt
        prepare_distill_cfg(cfg)
        # train_and_test records every logged value in losses.jsonl (a
        # superset of the config's lipschitz.jsonl, which nothing reads)
        cfg.custom_hooks = [
            hook for hook in cfg.custom_hooks
            if 'LipschitzMonitorHook' not in str(hook.get('type'))]
    return cfg


def train_and_test(cfg: Config, extra_hooks=()) -> dict:
    """Train with ``cfg``, then test the final model once. Returns times,
    the test metrics and the checkpoint path."""
    t0 = time.perf_counter()
    runner = DemoRunner.from_cfg(cfg)
    # every logged value of every iteration, for the plots
    runner.register_hook(
        LipschitzMonitorHook(out_file='losses.jsonl', keys=('', )))
    for hook in extra_hooks:
        runner.register_hook(hook)
    t1 = time.perf_counter()
    runner.train()
    t2 = time.perf_counter()
    metrics = runner.test()
    t3 = time.perf_counter()
    num_test = len(runner.test_dataloader.dataset)
    iters = runner.max_iters
    connectors = getattr(runner.model, 'connectors', None)
    connector_params = None if connectors is None else sum(
        p.numel() for p in connectors.parameters())
    del runner
    gc.collect()
    ckpt = osp.join(cfg.work_dir, f'iter_{iters}.pth')
    return dict(
        metrics={k: float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float))},
        build_time_s=t1 - t0,
        train_time_s=t2 - t1,
        test_time_s=t3 - t2,
        wall_time_s=t3 - t0,
        test_images=num_test,
        test_images_per_s=num_test / max(t3 - t2, 1e-9),
        train_iters=iters,
        checkpoint=ckpt if osp.exists(ckpt) else None,
        connector_params=connector_params,
        work_dir=cfg.work_dir)
