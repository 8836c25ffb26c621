"""A stock mmseg config (SyncBN everywhere) under a CPU launcher: the
config's norm layers become BN, with one notice."""
import torch
from mmengine.registry import MODELS, init_default_scope

import mmlckd  # noqa: F401
import mmlckd.utils.config as config_utils
from mmlckd.compat import adapt_cfg_for_cpu_dist
from mmlckd.utils.config import load_config

STOCK = 'mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb4-20k_voc12aug-512x512.py'


def test_cpu_launcher_turns_sync_bn_into_bn(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    notices = []
    monkeypatch.setattr(config_utils, 'print_log',
                        lambda msg, **kw: notices.append(msg))
    cfg = load_config(STOCK)
    assert 'SyncBN' in cfg.pretty_text
    single = load_config(STOCK)
    adapt_cfg_for_cpu_dist(single)  # launcher 'none': nothing to do
    assert single.model.backbone.norm_cfg.type == 'SyncBN' and not notices
    cfg.launcher = 'pytorch'
    adapt_cfg_for_cpu_dist(cfg)
    assert 'SyncBN' not in str(cfg.model.to_dict())
    assert cfg.model.decode_head.norm_cfg.type == 'BN'
    assert cfg.model.backbone.norm_cfg == dict(type='BN', requires_grad=True)
    assert len(notices) == 1 and 'SyncBN -> BN' in notices[0]
    # the model built from it holds no SyncBatchNorm (DDP on CPU refuses it)
    init_default_scope('mmseg')
    cfg.model.backbone.depth = 18
    cfg.model.backbone.init_cfg = None
    cfg.model.pretrained = None
    model = MODELS.build(cfg.model)
    kinds = {type(m).__name__ for m in model.modules()}
    assert 'SyncBatchNorm' not in kinds and 'BatchNorm2d' in kinds
