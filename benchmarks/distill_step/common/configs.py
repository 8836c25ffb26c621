"""The distillers measured, built offline from the recipes of ``configs/``
(random init, BN, an S x S segmentor input; narrow with ``--quick``, same
architectures and depths):

* ``default``: the README's drop-in, ``LipschitzDistiller(student=...,
  teacher=...)`` with nothing else said: OFD + Lipschitz on the backbone
  stages and the task-aware terms (``terms='auto'``), every weight set by
  the balancer;
* ``alone:<term>``: the same with only that term (its weight balanced too);
* ``recipe``: the recipe's distiller (explicit weights), as measured by
  the tables before the balancer (``--recipe``).
"""
import copy
import os.path as osp
from typing import Dict, List

from mmlckd.testing import narrow_model_cfg, tiny_model_cfg
from mmlckd.utils import load_config

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))))

MODEL_SPECS = {
    'retinanet': dict(
        title='RetinaNet R50 -> R18',
        scope='mmdet',
        recipe='configs/london/'
        'london_retinanet_r101_r18_fpn_8xb2-1x_voc0712.py',
        # the recipe's teacher is R-101: the R-50 teacher of this benchmark
        teacher='mmdet::pascal_voc/retinanet_r50_fpn_1x_voc0712.py'),
    'faster_rcnn': dict(
        title='Faster R-CNN R101 -> R18',
        scope='mmdet',
        recipe='configs/london/'
        'london_faster-rcnn_r101_r18_fpn_8xb2-1x_voc0712.py',
        teacher=None),
    'deeplabv3plus': dict(
        title='DeepLabV3+ R101-D8 -> R18-D8',
        scope='mmseg',
        recipe='configs/london/london_deeplabv3plus_r101-d8_r18-d8_'
        '4xb4-40k_voc12aug-512x512.py',
        teacher=None),
}
DATASET_TYPES = ('VOCDataset', 'PascalVOCDataset')
#: the built-in terms and the distiller arguments that switch them off
BUILTIN_TERMS = {'feat': 'feature_loss', 'lipschitz': 'lipschitz_loss'}


def load_recipe(name: str):
    return load_config(osp.join(ROOT, MODEL_SPECS[name]['recipe']))


def build_cfgs(name: str, size: int, quick: bool):
    """``(recipe distiller cfg, dataset cfg, data preprocessor cfg, recipe
    used, recipe config)``: the recipe's distiller built offline
    (:func:`tiny_model_cfg`), narrow with ``quick``."""
    spec = MODEL_SPECS[name]
    cfg = load_recipe(name)
    dcfg = copy.deepcopy(cfg.model)
    if spec['teacher']:
        dcfg['teacher']['config'] = spec['teacher']
    tiny_model_cfg(dcfg, size_hw=(size, size))
    dcfg['probe_input_size'] = (64, 64) if quick else (128, 128)
    if quick:
        narrow_model_cfg(dcfg['student'], base=8, width=16)
        narrow_model_cfg(dcfg['teacher']['config']['model'], base=16,
                         width=16)
    source = spec['recipe'] + (
        f' (teacher: {spec["teacher"]})' if spec['teacher'] else '')
    dataset = _find_dataset(cfg.train_dataloader.dataset)
    return (dcfg, dataset, dcfg['student']['data_preprocessor'], source,
            cfg)


def default_cfg(recipe_dcfg: dict) -> dict:
    """The drop-in distiller of the README on the recipe's two nets:
    student and teacher, every other argument left to its default (only
    ``probe_input_size``, which changes no term, follows the benchmark's
    size)."""
    return dict(type=recipe_dcfg['type'],
                student=copy.deepcopy(recipe_dcfg['student']),
                teacher=dict(config=copy.deepcopy(
                    recipe_dcfg['teacher']['config']), checkpoint=None),
                probe_input_size=recipe_dcfg['probe_input_size'])


def alone_cfg(default: dict, term: str, task_aware: Dict[str, dict]
              ) -> dict:
    """The default distiller with only ``term`` on: a built-in term keeps
    the backbone pairs and switches the other built-in term and the
    task-aware ones off; a task-aware term (config from ``task_aware``,
    the distiller's ``terms='auto'`` table) records no backbone pair."""
    cfg = copy.deepcopy(default)
    if term in BUILTIN_TERMS:
        for other, arg in BUILTIN_TERMS.items():
            if other != term:
                cfg[arg] = None
        cfg['terms'] = None
        return cfg
    cfg.update({arg: None for arg in BUILTIN_TERMS.values()})
    cfg.update(features=[], allow_empty_features=True,
               terms={term: copy.deepcopy(task_aware[term])})
    return cfg


def task_aware_table() -> Dict[str, dict]:
    """``name -> term config`` of ``terms='auto'``."""
    from mmlckd.models.distillers.term_runner import TASK_AWARE
    return {name: cfg for name, (_, cfg) in TASK_AWARE.items()}


def variant_names(terms: List[str]) -> List[str]:
    """``['default', 'alone:feat', ...]`` for the default distiller's
    terms."""
    return ['default'] + [f'alone:{t}' for t in terms]


def _find_dataset(cfg) -> dict:
    if cfg.get('type') in DATASET_TYPES:
        return copy.deepcopy(cfg)
    inner = cfg.get('dataset') or (cfg.get('datasets') or [None])[0]
    if inner is None:
        raise ValueError(f'no VOC dataset in {cfg}')
    return _find_dataset(inner)
