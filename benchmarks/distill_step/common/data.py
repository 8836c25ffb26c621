"""The batches: a synthetic PASCAL VOC read by the recipes' own datasets and
train pipelines, resized to S x S, preprocessed before any timing."""
import copy
import os.path as osp

from mmengine.dataset import pseudo_collate
from mmengine.registry import DATASETS, MODELS, init_default_scope

from mmlckd.testing import make_synthetic_voc
from .configs import MODEL_SPECS


def make_voc(root: str, num_images: int, img_size) -> str:
    """A synthetic VOCdevkit under ``root``; returns its path."""
    return make_synthetic_voc(
        root, num_trainval_07=num_images, num_test_07=0,
        num_trainval_12=num_images + 2, num_val_12=2, num_aug_extra_12=0,
        img_size=img_size, seed=0)['devkit']


def _fixed_size_pipeline(pipeline, size: int) -> list:
    """The train pipeline with every resize / crop / pad at S x S."""
    out = []
    for t in pipeline:
        t = dict(t)
        if t['type'] in ('Resize', 'RandomResize'):
            t = dict(type='Resize', scale=(size, size), keep_ratio=False)
        elif t['type'] == 'RandomCrop':
            t['crop_size'] = (size, size)
        elif t['type'] == 'Pad' and 'size' in t:
            t['size'] = (size, size)
        out.append(t)
    return out


def make_batches(name: str, dataset_cfg: dict, pre_cfg: dict, devkit: str,
                 size: int, batch: int, n_batches: int, device):
    """Preprocessed (inputs, data_samples) batches of size ``size``."""
    scope = MODEL_SPECS[name]['scope']
    init_default_scope(scope)
    ds = copy.deepcopy(dataset_cfg)
    ds.pop('_scope_', None)
    ds['data_root'] = devkit + '/' if scope == 'mmdet' else osp.join(
        devkit, 'VOC2012')
    ds['pipeline'] = _fixed_size_pipeline(ds['pipeline'], size)
    dataset = DATASETS.build(ds)
    pre = copy.deepcopy(dict(pre_cfg))
    if 'size' in pre:
        pre['size'] = (size, size)
    preprocessor = MODELS.build(pre).to(device)
    batches = []
    for b in range(n_batches):
        items = [dataset[(b * batch + i) % len(dataset)]
                 for i in range(batch)]
        data = preprocessor(pseudo_collate(items), True)
        batches.append((data['inputs'], data['data_samples']))
    return batches
