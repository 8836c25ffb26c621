"""Test helpers for tests/test_faults.py: a toy model and dataset that build
from a config (imported through ``custom_imports``), and a controlled kill.

With ``MMLCKD_TEST_KILL_AT_SAVE=N`` in the environment, the N-th checkpoint
write of the process writes half of its bytes to the destination file, then
the process SIGKILLs itself: a kill -9 in the middle of writing a checkpoint,
at a known point.
"""
import os
import signal

import torch
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, METRICS, MODELS
from torch.utils.data import Dataset


@DATASETS.register_module(force=True)
class FaultToyData(Dataset):

    def __init__(self, n=8, dim=4, nan_at=None, scale_from=None):
        self.n, self.dim, self.nan_at = n, dim, nan_at
        self.scale_from = scale_from  # items from here on: inputs x 1e4

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(self.dim, generator=g)
        if self.nan_at is not None and i == self.nan_at:
            x[0] = float('nan')
        if self.scale_from is not None and i >= self.scale_from:
            x = x * 1e4
        return dict(inputs=x, label=torch.tensor(i % 2))


@MODELS.register_module(force=True)
class FaultToyModel(BaseModel):

    def __init__(self, dim=4, width=8, loss_scale=1.0, nan_guard=True):
        super().__init__()
        self.nan_guard = nan_guard
        self.fc1 = nn.Linear(dim, width)
        self.fc2 = nn.Linear(width, 2)
        self.loss_scale = loss_scale

    def forward(self, inputs, label=None, mode='loss'):
        out = self.fc2(torch.relu(self.fc1(inputs)))
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(out, label) *
                        self.loss_scale)
        return out


@MODELS.register_module(force=True)
class FaultToyDistiller(FaultToyModel):
    """What mmlckd's distillation hooks look for (LipschitzMonitorHook)."""
    teacher = None
    distill_weight = 1.0
    distill_to_student = True


@MODELS.register_module(force=True)
class FaultToyTermsKD(FaultToyModel):
    """A distiller's loss layout (what SafeCheckpointHook records): the
    names of its terms (``terms``), no feature or Lipschitz loss."""
    teacher = None
    lipschitz_loss = feature_loss = None

    def __init__(self, terms=(), **kw):
        super().__init__(**kw)
        self.terms = {name: None for name in terms}


@MODELS.register_module(force=True)
class FaultToyKD(BaseModel):
    """A distiller's key layout: the student under ``student.``, plus a
    connector (``connectors.*``)."""

    def __init__(self, dim=4, width=8):
        super().__init__()
        self.student = FaultToyModel(dim, width)
        self.connectors = nn.ModuleList([nn.Linear(2, 2)])

    def forward(self, inputs, label=None, mode='loss'):
        return self.student(inputs, label, mode)


@METRICS.register_module(force=True)
class FaultToyAccuracy(BaseMetric):
    """The share of right labels (for a toy test split)."""

    def process(self, data_batch, data_samples):
        for out, label in zip(data_samples, data_batch['label']):
            self.results.append(float(out.argmax() == label))

    def compute_metrics(self, results):
        return dict(accuracy=sum(results) / max(len(results), 1))


def toy_test_split(cfg: dict) -> dict:
    """``cfg`` (a :func:`toy_cfg`) with a test split: tools/test.py needs
    test_dataloader, test_cfg and test_evaluator."""
    cfg.update(test_dataloader=dict(cfg['train_dataloader']),
               test_cfg=dict(type='TestLoop'),
               test_evaluator=dict(type='FaultToyAccuracy'))
    return cfg


def toy_cfg(work_dir, max_iters=3, interval=1, max_keep_ckpts=1, width=8,
            lr=0.1, hook='CheckpointHook', **data):
    return dict(
        custom_imports=dict(imports=['fault_toys'],
                            allow_failed_imports=False),
        model=dict(type='FaultToyModel', width=width),
        train_dataloader=dict(
            dataset=dict(type='FaultToyData', **data),
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=4, num_workers=0,
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=lr, momentum=0.9)),
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters),
        default_hooks=dict(
            checkpoint=dict(type=hook, interval=interval, by_epoch=False,
                            max_keep_ckpts=max_keep_ckpts),
            logger=dict(type='LoggerHook', interval=1)),
        log_processor=dict(by_epoch=False),
        randomness=dict(seed=0),
        work_dir=str(work_dir))


def _install_kill():
    at = int(os.environ.get('MMLCKD_TEST_KILL_AT_SAVE', '0'))
    if at <= 0:
        return
    import io

    import mmengine.runner.runner as runner_mod
    real = runner_mod.save_checkpoint
    calls = [0]

    def save_then_die(checkpoint, filename, *args, **kwargs):
        calls[0] += 1
        if calls[0] < at:
            return real(checkpoint, filename, *args, **kwargs)
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        data = buf.getvalue()
        with open(filename, 'wb') as f:
            f.write(data[:len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        print(f'KILLED while writing {filename}', flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    runner_mod.save_checkpoint = save_then_die


_install_kill()
