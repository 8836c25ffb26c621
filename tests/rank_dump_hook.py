"""Test helper hook: every rank writes its per-iteration outputs to
``<work_dir>/rank<k>.jsonl`` (imported through ``custom_imports``)."""
import json
import os.path as osp

from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class RankDumpHook(Hook):
    priority = 'LOWEST'

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        rec = {k: float(v.detach()) if hasattr(v, 'detach') else float(v)
               for k, v in (outputs or {}).items()}
        rec['iter'] = runner.iter + 1
        rec['img_ids'] = [ds.img_id for ds in data_batch['data_samples']]
        rec['unlabelled'] = [bool(ds.metainfo.get('unlabelled', False))
                             for ds in data_batch['data_samples']]
        model = runner.model.module if is_model_wrapper(runner.model) \
            else runner.model
        rec['param_sum'] = float(
            sum(p.detach().double().sum() for p in model.parameters()))
        path = osp.join(runner.work_dir, f'rank{get_rank()}.jsonl')
        with open(path, 'a') as f:
            f.write(json.dumps(rec) + '\n')
