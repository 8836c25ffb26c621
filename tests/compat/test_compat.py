"""torch >= 2.6 + mmengine 0.10.7: resume with weights_only=True kept on."""
import os
import pickle

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

import mmlckd  # noqa: F401  (registers the allow-list)
from mmlckd.checkpoint import safe_torch_load
from mmlckd.compat import mmengine_safe_globals


class _ToyData(Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(4, generator=g),
                    label=torch.tensor(i % 2))


class _Toy(BaseModel):

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, inputs, label, mode='loss'):
        out = self.fc(inputs)
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(out, label))
        return out


def _runner(work_dir, max_epochs, resume=False, load_from=None):
    return Runner(
        model=_Toy(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=_ToyData(),
            sampler=dict(type='DefaultSampler', shuffle=True),
            batch_size=4,
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(
            optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        resume=resume,
        load_from=load_from,
        randomness=dict(seed=0),
        experiment_name=f'toy_{max_epochs}_{resume}')


def test_torch_load_is_untouched():
    # the fix allow-lists globals; it neither patches torch.load nor turns
    # weights_only off
    assert torch.load.__module__ == 'torch.serialization'
    assert 'weights_only' in torch.load.__code__.co_varnames


def test_resume_continues_iterations_and_optimizer(tmp_path):
    r = _runner(tmp_path, max_epochs=2)
    r.train()
    ckpt_path = tmp_path / 'epoch_2.pth'
    assert ckpt_path.is_file()
    # stock torch.load (weights_only=True by default in torch>=2.6) works
    ckpt = torch.load(ckpt_path)
    assert ckpt['meta']['iter'] == 4 and ckpt['meta']['epoch'] == 2
    saved_momentum = [
        s['momentum_buffer'].clone()
        for s in ckpt['optimizer']['state'].values()
    ]
    saved_weight = ckpt['state_dict']['fc.weight'].clone()

    r2 = _runner(tmp_path, max_epochs=3, resume=True, load_from=str(ckpt_path))
    seen = {}

    def capture(runner):
        state = runner.optim_wrapper.optimizer.state
        seen['iter'] = runner.iter
        seen['epoch'] = runner.epoch
        seen['momentum'] = [
            state[p]['momentum_buffer'].clone()
            for p in runner.model.parameters()
        ]
        seen['weight'] = runner.model.fc.weight.detach().clone()

    from mmengine.hooks import Hook

    class Capture(Hook):
        priority = 'VERY_LOW'

        def before_train(self, runner):
            capture(runner)

    r2.register_hook(Capture())
    r2.train()
    assert seen['iter'] == 4 and seen['epoch'] == 2
    assert torch.equal(seen['weight'], saved_weight)
    for got, want in zip(seen['momentum'], saved_momentum):
        assert torch.equal(got, want)
    assert r2.iter == 6 and r2.epoch == 3
    # the message hub (HistoryBuffer) came back too
    hub = r2.message_hub.log_scalars
    assert 'train/loss' in hub and len(hub['train/loss'].data[0]) > 0


class _Evil:

    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_arbitrary_object_still_refused(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'x': _Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    with pytest.raises(pickle.UnpicklingError):
        safe_torch_load(str(path))


class _EvilGetattr:
    """Pickles as getattr(HistoryBuffer, '__init__'): an allow-listed class
    but not one of its statistics methods -- must be refused."""

    def __reduce__(self):
        from mmengine.logging.history_buffer import HistoryBuffer
        return (getattr, (HistoryBuffer, '__init__'))


def test_getattr_is_restricted(tmp_path):
    path = tmp_path / 'evil_getattr.pth'
    torch.save({'x': _EvilGetattr()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)


def test_allow_list_is_exact():
    names = {name for _, name in mmengine_safe_globals()}
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in names
    assert 'builtins.getattr' in names
    # nothing from os/subprocess/builtins besides the restricted getattr
    assert not any(n.startswith(('os.', 'subprocess.', 'posix.'))
                   for n in names)
    assert [n for n in names if n.startswith('builtins.')] == [
        'builtins.getattr'
    ]
    restricted = dict((n, o) for o, n in mmengine_safe_globals())
    with pytest.raises(pickle.UnpicklingError):
        restricted['builtins.getattr'](os, 'system')


def test_safe_load_missing_file_message(tmp_path):
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        safe_torch_load(str(tmp_path / 'nope.pth'))
