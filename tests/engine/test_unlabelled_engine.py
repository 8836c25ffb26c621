"""Images without labels through mmengine's Runner: exact resume in the
middle of an epoch, and DDP (gloo, 2 CPU processes) with the same mix on
every rank."""
import os.path as osp

import pytest
from mmengine.runner import Runner

import mmlckd  # noqa: F401
import rank_dump_hook  # noqa: F401  (registers RankDumpHook in-process)
from engine_toys import tiny_cfg
from test_engine import _dist_train, _records

pytestmark = [pytest.mark.filterwarnings('ignore::UserWarning'),
              pytest.mark.slow]


def _cfg(voc_devkit, work_dir, teacher_ckpt, max_iters, batch_size=1):
    """tiny_cfg (VOC2007 trainval labelled) plus the VOC2012 trainval
    images as unlabelled ones, one per labelled image."""
    cfg = tiny_cfg(voc_devkit, work_dir, teacher_ckpt, max_iters=max_iters,
                   batch_size=batch_size)
    cfg.train_dataloader.sampler = dict(type='InfiniteSampler', shuffle=True)
    cfg.unlabelled_images = dict(voc_split=osp.join(
        voc_devkit, 'VOC2012', 'ImageSets', 'Main', 'trainval.txt'))
    from mmlckd.cli.train_cfg import prepare_distill_cfg
    prepare_distill_cfg(cfg)
    return cfg


KEYS = ('loss_cls', 'loss_bbox', 'loss_feat', 'loss_lipschitz',
        'feat.labelled', 'feat.unlabelled', 'lipschitz.unlabelled')


def test_resume_in_the_middle_of_an_epoch_is_exact(voc_devkit, teacher_ckpt,
                                                   tmp_path):
    """3 iterations straight vs 2, then resumed to 3 (4 of the 16 images of
    an epoch seen at the checkpoint): the same images, labelled and
    unlabelled, the same losses and parameters at iteration 3."""
    straight = tmp_path / 'straight'
    Runner.from_cfg(_cfg(voc_devkit, straight, teacher_ckpt, 3)).train()
    part = tmp_path / 'part'
    Runner.from_cfg(_cfg(voc_devkit, part, teacher_ckpt, 2)).train()
    cfg = _cfg(voc_devkit, part, teacher_ckpt, 3)
    cfg.resume, cfg.load_from = True, str(part / 'iter_2.pth')
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 3
    want, got = _records(straight), _records(part)
    assert [r['iter'] for r in got] == [1, 2, 3]
    for rec in want:
        assert rec['unlabelled'] == [False, True]
    # the third batch is not one of the first two: the sampler moved on
    assert want[2]['img_ids'] not in (want[0]['img_ids'],
                                      want[1]['img_ids'])
    assert got[2]['img_ids'] == want[2]['img_ids']
    assert got[2]['unlabelled'] == want[2]['unlabelled']
    for key in KEYS:
        assert got[2][key] == pytest.approx(want[2][key], rel=1e-5,
                                            abs=1e-7), key
    assert got[2]['param_sum'] == pytest.approx(want[2]['param_sum'],
                                                rel=1e-6)


def test_ddp_every_rank_has_the_same_mix(voc_devkit, teacher_ckpt,
                                         tmp_path):
    """2 ranks (gloo), 1 labelled + 1 unlabelled image per rank and batch:
    every batch of every rank holds that mix, from the rank's own shard of
    each source, and the replicas stay identical."""
    work = tmp_path / 'ddp'
    cfg = _cfg(voc_devkit, work, teacher_ckpt, 2)
    # tools/train.py applies prepare_distill_cfg again: a no-op now
    _dist_train(cfg, tmp_path / 'ddp_cfg.py', work)
    r0, r1 = _records(work, 0), _records(work, 1)
    assert len(r0) == len(r1) == 2
    for a, b in zip(r0, r1):
        assert a['unlabelled'] == b['unlabelled'] == [False, True]
        assert a['img_ids'][0] != b['img_ids'][0]  # labelled shards
        assert a['img_ids'][1] != b['img_ids'][1]  # unlabelled shards
        assert a['param_sum'] == pytest.approx(b['param_sum'], rel=1e-9)
        for key in ('feat.unlabelled', 'loss_cls'):
            assert key in a
