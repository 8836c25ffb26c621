"""The console of a distillation run: short train lines, weights in %.3e,
and a start-of-training line naming what is distilled."""
from mmengine.registry import MODELS, init_default_scope

import mmlckd  # noqa: F401
from mmlckd.engine.log_processor import (_Sci, describe_distiller,
                                         drop_console_items)
from mmlckd.testing import det_model


def test_per_pair_sigmas_stay_off_the_console_line():
    line = ('Iter(train) [ 4/5]  lr: 1.0000e-02  eta: 0:00:01  '
            'time: 1.2000  data_time: 0.0100  loss: 1.7700  '
            'loss_cls: 1.1000  sigma_s.backbone.0: 1.2345  '
            'sigma_t.backbone.0: 2.3456  sigma_ratio.backbone.0: 0.5263  '
            'loss_lipschitz: 0.0100  weight_feat: 9.573e-05')
    short = drop_console_items(line)
    assert 'sigma_' not in short
    assert short == ('Iter(train) [ 4/5]  lr: 1.0000e-02  eta: 0:00:01  '
                     'time: 1.2000  data_time: 0.0100  loss: 1.7700  '
                     'loss_cls: 1.1000  loss_lipschitz: 0.0100  '
                     'weight_feat: 9.573e-05')
    assert f'{_Sci(9.573e-05):.4f}' == '9.573e-05'


def test_start_line_names_pairs_blocks_and_terms():
    init_default_scope('mmdet')
    model = MODELS.build(dict(
        type='mmlckd.LipschitzDistiller', student=det_model(),
        teacher=dict(config=dict(model=det_model(base=32),
                                 default_scope='mmdet'), checkpoint=None),
        feature_loss=dict(type='mmlckd.OFDLoss', loss_weight=1e-4)))
    line = describe_distiller(model)
    for i, pair in enumerate(model.pairs):
        assert f'[{i}] {pair.student.key} <- {pair.teacher.key}' in line
    n = len(model.groups['backbone'])
    assert f'backbone.{n - 2} = pairs [{n - 2}]->[{n - 1}]' in line
    assert 'loss_lipschitz (auto: weight 0 for the 10 calibration steps' \
        in line
    assert 'loss_feat (fixed weight 1.000e-04)' in line
