"""Images without labels beside the labelled training set.

Every distillation term except the task loss needs no label, so images
nobody labelled still carry the teacher's features and predictions. One
config key adds them (:func:`add_unlabelled_images`, applied by
``tools/train.py`` and the demo through
:func:`mmlckd.utils.cli.prepare_distill_cfg`)::

    unlabelled_images = dict(img_dir='data/extra_images/')   # or
    unlabelled_images = dict(img_list='data/extra.txt', ratio=1.0)
    unlabelled_images = dict(
        voc_split='data/VOCdevkit/VOC2012/ImageSets/Main/train.txt')

What it does to ``train_dataloader`` (written out, the same lines work
with any ``train.py``):

* ``dataset`` becomes :class:`WithUnlabelledImages`: an mmengine
  ``ConcatDataset`` of the labelled dataset and an
  :class:`UnlabelledImageDataset` whose pipeline is the labelled one
  without annotations (:func:`unlabelled_pipeline`, mmdet's
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
import os
import os.path as osp
import warnings
from typing import List, Optional, Sequence, Union

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.dataset import BaseDataset, ConcatDataset
from mmengine.registry import DATASETS as ROOT_DATASETS
from mmengine.registry import DefaultScope

from mmlckd.registry import DATASETS, TRANSFORMS

__all__ = ['UnlabelledImageDataset', 'WithUnlabelledImages',
           'LoadEmptySegMap', 'add_unlabelled_images', 'unlabelled_pipeline',
           'UnlabelledDataWarning']

#: the metainfo flag (the distiller reads the same name)
UNLABELLED = 'unlabelled'
#: the image formats OpenCV (mmcv's default image backend) decodes, by the
#: names Pillow gives them
DECODABLE = ('JPEG', 'PNG', 'BMP', 'TIFF', 'WEBP', 'PPM', 'MPO')
_MAX_NAMED = 10


class UnlabelledDataWarning(UserWarning):
    """A problem with the unlabelled images that training survives."""


def _names(paths: Sequence[str]) -> str:
    shown = ', '.join(paths[:_MAX_NAMED])
    more = len(paths) - _MAX_NAMED
    return shown + (f' and {more} more' if more > 0 else '')


def _image_size(path: str):
    """``(width, height)`` of a decodable image, or the reason it is
    not."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            fmt, size = im.format, im.size
            im.verify()
    except Exception as e:  # noqa: BLE001  (whatever Pillow raises)
        return f'not an image ({type(e).__name__})'
    if fmt not in DECODABLE:
        return f'{fmt} images are not decoded by OpenCV'
    return size


@DATASETS.register_module()
class UnlabelledImageDataset(BaseDataset):
    """Images without annotations, from one source.

    Exactly one of:

    Args:
        img_dir (str): a folder: every file in it (``recursive``: and in
            its subfolders), hidden files left out, in sorted order.
        img_list (str): a text file, one image path a line (relative to
            ``data_root``, or absolute); blank lines and ``#`` comments
            are skipped.
        voc_split (str): a PASCAL VOC ``ImageSets`` split file
            (``.../VOC2012/ImageSets/Main/train.txt``): its image ids, read
            from the ``JPEGImages`` folder beside ``ImageSets``.

    Other args:
        data_root (str): prepended to the relative paths above.
        check_images (bool): open every file once at build time (Pillow
            reads the header and verifies the file) and skip those that
            are not images OpenCV decodes, with one warning line naming
            them and counting the skips. Default True.
        pipeline (list): the transforms; by :class:`WithUnlabelledImages`
            the labelled pipeline without annotations.

    Raises a ``FileNotFoundError`` naming the path for a missing folder,
    list or split file, or listed image, and a ``ValueError`` naming the
    source when it holds no image. Every packed sample carries
    ``unlabelled=True`` in its metainfo.
    """

    def __init__(self,
                 img_dir: Optional[str] = None,
                 img_list: Optional[str] = None,
                 voc_split: Optional[str] = None,
                 data_root: str = '',
                 recursive: bool = False,
                 check_images: bool = True,
                 pipeline: Sequence = (),
                 metainfo: Optional[dict] = None,
                 indices: Optional[Union[int, Sequence[int]]] = None,
                 serialize_data: bool = True,
                 lazy_init: bool = False,
                 max_refetch: int = 1000) -> None:
        given = {k: v for k, v in (('img_dir', img_dir),
                                   ('img_list', img_list),
                                   ('voc_split', voc_split)) if v}
        if len(given) != 1:
            raise ValueError(
                'unlabelled images: give exactly one of img_dir= (a '
                'folder), img_list= (a text file, one image path a line) or '
                'voc_split= (a VOC ImageSets split file); got '
                f'{given or None}')
        (self.source_kind, source), = given.items()
        self.source = source if osp.isabs(source) or not data_root else \
            osp.join(data_root, source)
        self.recursive = recursive
        self.check_images = check_images
        super().__init__(ann_file='', metainfo=metainfo, data_root=data_root,
                         pipeline=list(pipeline), indices=indices,
                         serialize_data=serialize_data, lazy_init=lazy_init,
                         max_refetch=max_refetch)

    # ------------------------------------------------------------ paths
    def _resolve(self, path: str) -> str:
        if osp.isabs(path) or not self.data_root:
            return path
        return osp.join(self.data_root, path)

    def _folder_paths(self) -> List[str]:
        if not osp.isdir(self.source):
            raise FileNotFoundError(
                f'unlabelled images: the folder {self.source!r} does not '
                'exist' + ('' if not osp.exists(self.source) else
                           ' (it is a file: give a list file as img_list=)')
                + '; check img_dir= (and data_root=)')
        paths = []
        for root, dirs, files in os.walk(self.source):
            dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
            paths += [osp.join(root, f) for f in sorted(files)
                      if not f.startswith('.')]
            if not self.recursive:
                break
        return paths

    def _list_paths(self) -> List[str]:
        if not osp.isfile(self.source):
            raise FileNotFoundError(
                f'unlabelled images: the {self.source_kind} file '
                f'{self.source!r} does not exist; check {self.source_kind}= '
                '(and data_root=)')
        with open(self.source, encoding='utf-8') as f:
            lines = [line.split('#', 1)[0].strip() for line in f]
        lines = [line for line in lines if line]
        if self.source_kind == 'img_list':
            return [self._resolve(line) for line in lines]
        # VOC: <year>/ImageSets/Main/<split>.txt -> <year>/JPEGImages/<id>
        year = osp.dirname(osp.dirname(osp.dirname(self.source)))
        return [osp.join(year, 'JPEGImages', line.split()[0] + '.jpg')
                for line in lines]

    def load_data_list(self) -> List[dict]:
        paths = self._folder_paths() if self.source_kind == 'img_dir' \
            else self._list_paths()
        missing = [p for p in paths if not osp.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f'unlabelled images: {len(missing)} of the {len(paths)} '
                f'images that {self.source!r} names do not exist: '
                f'{_names(missing)}; fix the paths (relative ones are read '
                'from data_root=) or remove them')
        data_list, skipped = [], []
        for path in paths:
            info = dict(img_path=path, img_id=osp.splitext(
                osp.relpath(path, self.data_root or osp.dirname(path)))[0])
            if self.check_images:
                size = _image_size(path)
                if isinstance(size, str):
                    skipped.append(f'{path} ({size})')
                    continue
                info['width'], info['height'] = size
            data_list.append(info)
        if skipped:
            warnings.warn(UnlabelledDataWarning(
                f'unlabelled images: skipped {len(skipped)} of the '
                f'{len(paths)} files of {self.source!r} that are not '
                f'images: {_names(skipped)}'), stacklevel=2)
        if not data_list:
            raise ValueError(
                f'unlabelled images: {self.source!r} ({self.source_kind}) '
                'holds no image' + (f' ({len(skipped)} files that are not '
                                    'images)' if skipped else '') +
                '; point it at a folder or list with images, or remove '
                'unlabelled_images from the config')
        return data_list

    def prepare_data(self, idx):
        try:
            data = super().prepare_data(idx)
        except AssertionError as e:  # mmcv: cv2 decoded nothing
            if 'failed to load image' not in str(e):
                raise
            data = None
        if data is None:  # (mmcv returns None with ignore_empty=True)
            self._failed = getattr(self, '_failed', 0) + 1
            warnings.warn(UnlabelledDataWarning(
                'unlabelled images: could not decode '
                f'{self.get_data_info(idx)["img_path"]}; another image is '
                f'used instead ({self._failed} so far in this process)'),
                stacklevel=2)
            return None  # BaseDataset takes another image
        for ds in _samples(data):
            ds.set_metainfo({UNLABELLED: True})
        return data


def _samples(data: dict) -> list:
    """The packed data samples of a pipeline's output (one, or one per
    branch of mmdet's ``MultiBranch``)."""
    ds = data.get('data_samples')
    if isinstance(ds, dict):
        return [v for v in ds.values() if v is not None]
    return [] if ds is None else [ds]


@TRANSFORMS.register_module()
class LoadEmptySegMap(BaseTransform):
    """mmseg's ``LoadAnnotations`` for an image without labels: a
    ``gt_seg_map`` of ``ignore_index`` everywhere (registered in
    ``seg_fields``, so resizing, cropping and flipping treat it as a
    label map). A plain segmentor ignores every pixel of it; the distiller
    never computes a task loss on it."""

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = ignore_index

    def transform(self, results: dict) -> dict:
        h, w = results['img'].shape[:2]
        results['gt_seg_map'] = np.full((h, w), self.ignore_index, np.uint8)
        results.setdefault('seg_fields', []).append('gt_seg_map')
        return results


def _type_name(t) -> str:
    typ = t.get('type', '') if isinstance(t, dict) else type(t).__name__
    typ = typ if isinstance(typ, str) else typ.__name__
    return typ.rsplit('.', 1)[-1]


#: detection transforms that need objects: left out for unlabelled images
_DROP = ('FilterAnnotations', )


def unlabelled_pipeline(pipeline: Sequence, task: str = 'det') -> list:
    """The labelled training ``pipeline`` for images without annotations
    (``task``: ``'det'`` or ``'seg'``): ``LoadAnnotations`` becomes mmdet's
    ``LoadEmptyAnnotations`` (detection, same fields) or
    :class:`LoadEmptySegMap` (segmentation); ``FilterAnnotations`` (which
    would drop every image) is left out; mmdet's ``RandomCrop`` may crop
    no object (``allow_negative_crop=True``); ``LoadImageFromFile``
    returns nothing for a file it cannot decode (the dataset then takes
    another image). Everything else, resizing and cropping included, is
    unchanged."""
    out = []
    for t in pipeline:
        name = _type_name(t)
        if name in _DROP:
            continue
        t = copy.deepcopy(t)
        if name == 'LoadImageFromFile' and isinstance(t, dict):
            t['ignore_empty'] = True
        elif name == 'LoadAnnotations':
            if task == 'seg':
                t = dict(type='mmlckd.LoadEmptySegMap')
            else:
                t = dict(type='mmdet.LoadEmptyAnnotations',
                         with_bbox=t.get('with_bbox', True),
                         with_label=t.get('with_label', True),
                         with_mask=t.get('with_mask', False),
                         with_seg=t.get('with_seg', False))
        elif name == 'RandomCrop' and task == 'det' and isinstance(t, dict):
            t['allow_negative_crop'] = True
        out.append(t)
    return out


def _find_pipeline(cfg) -> Optional[list]:
    """The pipeline of a dataset config (the first one of a
    ``ConcatDataset``; through ``RepeatDataset``-style wrappers)."""
    if not isinstance(cfg, dict):
        return None
    if cfg.get('pipeline'):
        return list(cfg['pipeline'])
    for sub in cfg.get('datasets') or []:
        found = _find_pipeline(sub)
        if found:
            return found
    if isinstance(cfg.get('dataset'), dict):
        return _find_pipeline(cfg['dataset'])
    return None


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
                f'({len(lab)} images): {_names(both)}. They are trained '
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
