"""Shared pytest fixtures for mmlckd.

* ``synthetic_voc`` (session): a factory ``synthetic_voc(**kwargs) -> summary``
  that generates (once per session and argument set) a synthetic VOCdevkit in
  a temporary folder; defaults to the tiny :data:`SMALL_VOC` set, any
  :func:`mmlckd.testing.make_synthetic_voc` argument can be overridden.
* ``voc_summary`` / ``voc_root`` / ``voc_devkit`` (session): the default tiny
  dataset (8 trainval-07, 4 test-07, 8 trainval-12 of which 4 val-12; 64..96
  px), its generator root (the folder that holds ``VOCdevkit``) and the
  ``VOCdevkit`` path (``data_root`` of the stock mmdet VOC configs; mmseg's use
  ``<voc_devkit>/VOC2012``).
* ``teacher_ckpt`` (module): the checkpoint of a seeded random tiny
  RetinaNet teacher (the one of ``engine_toys.tiny_cfg``).
* :func:`limit_torch_threads` (plain function) / ``torch_threads`` (opt-in
  fixture): cap torch's CPU threads; a no-op when torch is not importable.
"""
import json
import os

import pytest

from mmlckd.testing import det_model, make_synthetic_voc

SMALL_VOC = dict(
    num_trainval_07=8,
    num_test_07=4,
    num_trainval_12=8,
    num_val_12=4,
    img_size=dict(min=64, max=96),
    seed=0,
    max_objects=4)


def limit_torch_threads(num_threads: int = 2) -> bool:
    """Cap torch's intra-op (and, if still possible, inter-op) CPU threads.

    Returns False (and does nothing) when torch is not importable.
    """
    try:
        import torch
    except ImportError:
        return False
    torch.set_num_threads(num_threads)
    try:
        torch.set_num_interop_threads(min(num_threads, 2))
    except RuntimeError:  # only allowed before any parallel work started
        pass
    return True


@pytest.fixture(scope='session')
def torch_threads():
    """Opt-in: ``def test_x(torch_threads): ...`` runs with <= 2 threads."""
    return limit_torch_threads(int(os.environ.get('MMLCKD_TEST_THREADS', 2)))


@pytest.fixture(scope='session')
def synthetic_voc(tmp_path_factory):
    """Factory: ``synthetic_voc(**kwargs)`` -> summary dict (cached)."""
    cache = {}

    def make(**kwargs):
        args = {**SMALL_VOC, **kwargs}
        key = json.dumps(args, sort_keys=True, default=repr)
        if key not in cache:
            root = tmp_path_factory.mktemp('synthetic_voc')
            cache[key] = make_synthetic_voc(str(root), **args)
        return cache[key]

    return make


@pytest.fixture(scope='session')
def voc_summary(synthetic_voc):
    return synthetic_voc()


@pytest.fixture(scope='session')
def voc_root(voc_summary):
    """Generator root of the default tiny dataset (holds ``VOCdevkit``)."""
    return voc_summary['root']


@pytest.fixture(scope='session')
def voc_devkit(voc_summary):
    return voc_summary['devkit']


@pytest.fixture(scope='module')
def teacher_ckpt(tmp_path_factory):
    import torch
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('mmdet')
    torch.manual_seed(1)
    teacher = MODELS.build(det_model('retinanet', base=32))
    path = tmp_path_factory.mktemp('teacher') / 'teacher.pth'
    torch.save(dict(state_dict=teacher.state_dict()), path)
    return str(path)
