"""A tiny RetinaNet distillation run through mmengine's Runner on the
synthetic VOC (tests/engine and tests/test_faults.py)."""
from mmengine.config import Config

from mmlckd.testing import det_model
from mmlckd.cli.train_cfg import prepare_distill_cfg


def _pipeline(train):
    p = [dict(type='LoadImageFromFile'),
         dict(type='LoadAnnotations', with_bbox=True),
         dict(type='Resize', scale=(64, 64), keep_ratio=False)]
    meta = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')
    return p + [dict(type='PackDetInputs', meta_keys=meta)]


def tiny_cfg(devkit, work_dir, teacher_ckpt, max_iters=2, batch_size=2,
             shuffle=True):
    """A tiny RetinaNet R18(w16) <- R18(w32) distillation run on the
    synthetic VOC2007 split, deterministic pipeline (no random flips)."""
    data = dict(type='VOCDataset', data_root=devkit,
                ann_file='VOC2007/ImageSets/Main/trainval.txt',
                data_prefix=dict(sub_data_root='VOC2007/'),
                filter_cfg=dict(filter_empty_gt=True, min_size=1),
                pipeline=_pipeline(True))
    test = dict(data, ann_file='VOC2007/ImageSets/Main/test.txt',
                test_mode=True, filter_cfg=None)
    loader = dict(batch_size=1, num_workers=0,
                  sampler=dict(type='DefaultSampler', shuffle=False),
                  dataset=test)
    cfg = dict(
        default_scope='mmdet',
        custom_imports=dict(imports=['rank_dump_hook'],
                            allow_failed_imports=False),
        model=dict(
            type='mmlckd.LipschitzDistiller',
            student=det_model('retinanet', base=16),
            teacher=dict(config=dict(model=det_model('retinanet', base=32),
                                     default_scope='mmdet'),
                         checkpoint=teacher_ckpt),
            lipschitz_loss=dict(type='mmlckd.LipschitzLoss', loss_weight=0.2),
            feature_loss=dict(type='mmlckd.OFDLoss', loss_weight=1e-4),
            terms=None,  # the engine with the backbone terms (fast)
            probe_input_size=(64, 64)),
        train_dataloader=dict(
            batch_size=batch_size, num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=shuffle),
            dataset=data),
        val_dataloader=loader, test_dataloader=loader,
        val_evaluator=dict(type='VOCMetric', metric='mAP',
                           eval_mode='11points'),
        test_evaluator=dict(type='VOCMetric', metric='mAP',
                            eval_mode='11points'),
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters,
                       val_interval=10**6),
        val_cfg=dict(type='ValLoop'), test_cfg=dict(type='TestLoop'),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9,
                                          weight_decay=1e-4)),
        default_hooks=dict(
            timer=dict(type='IterTimerHook'),
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='CheckpointHook', interval=2,
                            by_epoch=False),
            param_scheduler=dict(type='ParamSchedulerHook'),
            sampler_seed=dict(type='DistSamplerSeedHook')),
        custom_hooks=[dict(type='RankDumpHook'),
                      dict(type='mmlckd.LipschitzMonitorHook')],
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
        log_processor=dict(by_epoch=False),
        randomness=dict(seed=0),
        work_dir=str(work_dir),
    )
    cfg = Config(cfg)
    prepare_distill_cfg(cfg)
    return cfg
