"""Images without labels beside the labelled training set.

Every distillation term except the task loss needs no label, so images
nobody labelled still carry the teacher's features and predictions. One
config key adds them (:func:`add_unlabelled_images`, applied by
``tools/train.py`` and the demo through
:func:`mmlckd.cli.train_cfg.prepare_distill_cfg`)::

    unlabelled_images = dict(img_dir='data/extra_images/')   # or
    unlabelled_images = dict(img_list='data/extra.txt', ratio=1.0)
    unlabelled_images = dict(
        voc_split='data/VOCdevkit/VOC2012/ImageSets/Main/train.txt')

What it does to ``train_dataloader`` (written out, the same lines work
with any ``train.py``):

* ``dataset`` becomes :class:`WithUnlabelledImages`: an mmengine
  ``ConcatDataset`` of the labelled dataset and an
  :class:`~.images.UnlabelledImageDataset` whose pipeline is the labelled
  one without annotations (:func:`~.pipeline.unlabelled_pipeline`, mmdet's
  ``LoadEmptyAnnotations`` for detection), so an image of any size goes
  through the same resizing and cropping as a labelled one;
* ``sampler`` becomes ``mmdet.MultiSourceSampler``: every batch holds the
  configured number of labelled images (``batch_size``, unchanged) plus
  ``round(ratio * batch_size)`` unlabelled ones, on every DDP rank, from
  its own shard of each source; its order is a function of the seed, so
  mmengine's resume (which replays the sampler to the iteration) is exact;
* ``batch_size`` becomes the sum, ``batch_sampler`` None (an
  ``AspectRatioBatchSampler`` would regroup the images and break the
  mix).

The samples of the unlabelled source carry ``unlabelled=True`` in their
metainfo; the distiller computes the task loss on the other ones only and
every distillation term on all of them
(:mod:`mmlckd.models.distillers.unlabelled`).
"""
import copy
import os.path as osp
import warnings
from typing import List, Optional, Union

from mmengine.dataset import ConcatDataset
from mmengine.registry import DATASETS as ROOT_DATASETS
from mmengine.registry import DefaultScope

from mmlckd.registry import DATASETS
from mmlckd.utils.config import nested_datasets
from .images import UnlabelledDataWarning, some_names
from .pipeline import unlabelled_pipeline

__all__ = ['WithUnlabelledImages', 'add_unlabelled_images']


def _find_pipeline(cfg) -> Optional[list]:
    """The pipeline of a dataset config (the first one of a
    ``ConcatDataset``; through ``RepeatDataset``-style wrappers)."""
    return next((list(d['pipeline']) for d in nested_datasets(cfg)
                 if isinstance(d, dict) and d.get('pipeline')), None)


def _current_task() -> str:
    scope = DefaultScope.get_current_instance()
    return 'seg' if scope is not None and scope.scope_name == 'mmseg' \
        else 'det'


def _img_paths(dataset) -> List[str]:
    paths = []
    for i in range(len(dataset)):
        path = dataset.get_data_info(i).get('img_path')
        if path:
            paths.append(osp.realpath(path))
    return paths


@DATASETS.register_module()
class WithUnlabelledImages(ConcatDataset):
    """The labelled training set and images without labels, as the two
    sources of mmdet's ``MultiSourceSampler`` (source 0: labelled, source
    1: unlabelled).

    Args:
        labelled (dict | dataset): the labelled training dataset.
        unlabelled (dict): :class:`UnlabelledImageDataset` arguments (its
            ``type`` may be another dataset class); without a
            ``pipeline``, :func:`unlabelled_pipeline` of the labelled
            one.
        check_overlap (bool): warn, with the count, when unlabelled images
            are also in the labelled set (same file). Default True.
        ignore_keys: of mmengine's ``ConcatDataset``.
    """

    def __init__(self, labelled, unlabelled: dict,
                 check_overlap: bool = True,
                 ignore_keys: Union[str, List[str], None] = None,
                 lazy_init: bool = False) -> None:
        lab = ROOT_DATASETS.build(labelled) if isinstance(labelled, dict) \
            else labelled
        cfg = dict(unlabelled)
        cfg.setdefault('type', 'mmlckd.UnlabelledImageDataset')
        if cfg.get('pipeline') is None:
            pipeline = _find_pipeline(labelled)
            if pipeline is None:
                raise ValueError(
                    'unlabelled images: the labelled dataset config has no '
                    'pipeline to derive theirs from; give '
                    'unlabelled_images=dict(..., pipeline=[...])')
            cfg['pipeline'] = unlabelled_pipeline(pipeline, _current_task())
        unlab = ROOT_DATASETS.build(cfg)
        # the unlabelled images share the labelled set's classes / palette
        unlab._metainfo = copy.deepcopy(lab.metainfo)
        self.check_overlap = check_overlap
        # mmengine's ConcatDataset takes BaseDataset elements only; the
        # labelled set may be a ConcatDataset itself (VOC07 + VOC12)
        super().__init__([unlab], lazy_init=True, ignore_keys=ignore_keys)
        self.datasets = [lab, unlab]
        self._metainfo = lab.metainfo
        if not lazy_init:
            self.full_init()

    def full_init(self) -> None:
        if self._fully_initialized:
            return
        super().full_init()
        if self.check_overlap:
            self._warn_overlap()

    def _warn_overlap(self) -> None:
        lab, unlab = self.datasets
        labelled = set(_img_paths(lab))
        both = [p for p in _img_paths(unlab) if p in labelled]
        if both:
            warnings.warn(UnlabelledDataWarning(
                f'unlabelled images: {len(both)} of the {len(unlab)} '
                f'unlabelled images are also in the labelled set '
                f'({len(lab)} images): {some_names(both)}. They are trained '
                'with their labels and distilled again as unlabelled '
                'images; remove them from '
                f'{getattr(unlab, "source", "the unlabelled source")!r} '
                'unless that is what you want'), stacklevel=2)


def add_unlabelled_images(cfg) -> bool:
    """Apply a config's ``unlabelled_images = dict(...)`` to its
    ``train_dataloader`` (see the module docstring); returns whether it
    did.

    ``unlabelled_images`` holds the :class:`UnlabelledImageDataset`
    arguments (``img_dir`` / ``img_list`` / ``voc_split``, ``data_root``,
    ``pipeline``...) and the mix: ``ratio`` (unlabelled images per
    labelled image in a batch, default 1.0: the configured batch of
    labelled images plus as many unlabelled ones) or ``per_batch`` (the
    number of unlabelled images per batch and GPU).
    """
    spec = cfg.get('unlabelled_images', None)
    if not spec:
        return False
    spec = copy.deepcopy(dict(spec))
    model_type = str(cfg.get('model', {}).get('type', ''))
    if not model_type.endswith('LipschitzDistiller'):
        raise ValueError(
            'unlabelled_images needs model type mmlckd.LipschitzDistiller: '
            f'a plain {model_type or "model"} would compute its task loss '
            'on images without labels (teaching it that everything is '
            'background); remove unlabelled_images or distil')
    loader = cfg.train_dataloader
    ratio = float(spec.pop('ratio', 1.0))
    per_batch = spec.pop('per_batch', None)
    n_lab = int(loader.batch_size)
    n_unlab = int(per_batch) if per_batch is not None else \
        int(round(ratio * n_lab))
    if n_unlab < 1 or n_lab < 1:
        raise ValueError(
            f'unlabelled_images: a batch of {n_lab} labelled and {n_unlab} '
            'unlabelled images; both need at least one (raise ratio= or '
            'per_batch=, or the batch size)')
    sampler = dict(loader.get('sampler') or {})
    loop = dict(cfg.get('train_cfg') or {})
    if 'Epoch' in str(loop.get('type', '')) or loop.get('by_epoch', False):
        import logging

        from mmengine.logging import print_log
        print_log(
            'unlabelled_images with an epoch-based loop: mmdet\'s '
            'MultiSourceSampler is infinite and keeps no epoch, so an '
            'epoch is len(labelled) + len(unlabelled) images and a resume '
            'restarts the order from the seed. For an exact resume use '
            "train_cfg=dict(type='IterBasedTrainLoop', max_iters=...)",
            logger='current', level=logging.WARNING)
    total = n_lab + n_unlab
    loader.dataset = dict(type='mmlckd.WithUnlabelledImages',
                          labelled=loader.dataset, unlabelled=spec)
    loader.sampler = dict(type='mmdet.MultiSourceSampler', batch_size=total,
                          source_ratio=[n_lab, n_unlab],
                          shuffle=sampler.get('shuffle', True))
    loader.batch_sampler = None
    loader.batch_size = total
    cfg.pop('unlabelled_images')
    return True
