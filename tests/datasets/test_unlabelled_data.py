"""Images without labels: the sources, the derived pipeline, the bad-input
messages and the per-batch mix (no model: fast)."""
import os
import os.path as osp

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import DATASETS, init_default_scope
from PIL import Image

import mmlckd  # noqa: F401
from mmlckd.datasets import add_unlabelled_images, unlabelled_pipeline
from mmlckd.datasets.images import UnlabelledDataWarning
from mmlckd.cli.train_cfg import prepare_distill_cfg

DET_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1, 1)),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
SEG_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(64, 64), ratio_range=(0.75, 1.25),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=(48, 48), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]


def _image(path, w, h, fmt=None):
    rng = np.random.default_rng(w * 1000 + h)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
        path, format=fmt)
    return str(path)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / 'extra'
    d.mkdir()
    # smaller and larger than the pipeline's 64 px, other aspect ratios
    _image(d / 'a.jpg', 20, 30)
    _image(d / 'b.png', 150, 90)
    _image(d / 'c.jpg', 64, 64)
    return d


def _unlabelled(scope='mmdet', pipeline=DET_PIPELINE, **source):
    init_default_scope(scope)
    task = 'seg' if scope == 'mmseg' else 'det'
    return DATASETS.build(dict(type='mmlckd.UnlabelledImageDataset',
                               pipeline=unlabelled_pipeline(pipeline, task),
                               **source))


def test_folder_images_of_any_size_go_through_the_labelled_pipeline(folder):
    ds = _unlabelled(img_dir=str(folder))
    assert len(ds) == 3
    for i in range(3):
        out = ds[i]
        sample = out['data_samples']
        assert sample.metainfo['unlabelled'] is True
        assert len(sample.gt_instances) == 0  # mmdet's LoadEmptyAnnotations
        # Resize(64, keep_ratio) as for a labelled image: longest side 64
        assert max(out['inputs'].shape[1:]) == 64
    assert ds.get_data_info(1)['width'] == 150


def test_derived_pipeline_keeps_everything_but_the_annotations():
    det = unlabelled_pipeline(DET_PIPELINE, 'det')
    assert [t['type'] for t in det] == [
        'LoadImageFromFile', 'mmdet.LoadEmptyAnnotations', 'Resize',
        'RandomFlip', 'PackDetInputs']
    assert det[0]['ignore_empty'] is True
    seg = unlabelled_pipeline(SEG_PIPELINE, 'seg')
    assert seg[1] == dict(type='mmlckd.LoadEmptySegMap')
    assert seg[2:] == SEG_PIPELINE[2:]


def test_segmentation_images_get_an_ignore_map_cropped_with_the_image(
        folder):
    ds = _unlabelled('mmseg', SEG_PIPELINE, img_dir=str(folder))
    for i in range(len(ds)):
        out = ds[i]
        sample = out['data_samples']
        assert sample.metainfo['unlabelled'] is True
        seg = sample.gt_sem_seg.data
        assert seg.shape[-2:] == out['inputs'].shape[-2:]
        assert bool((seg == 255).all())


def test_list_file_and_voc_split(folder, tmp_path, voc_devkit):
    lst = tmp_path / 'list.txt'
    lst.write_text('# extra images\n\na.jpg\n' + str(folder / 'b.png') +
                   '\n')
    ds = _unlabelled(img_list=str(lst), data_root=str(folder))
    assert [osp.basename(ds.get_data_info(i)['img_path'])
            for i in range(len(ds))] == ['a.jpg', 'b.png']
    split = osp.join(voc_devkit, 'VOC2007', 'ImageSets', 'Main',
                     'trainval.txt')
    voc = _unlabelled(voc_split=split)
    with open(split) as f:
        ids = [line.strip() for line in f if line.strip()]
    assert len(voc) == len(ids)
    assert voc.get_data_info(0)['img_path'] == osp.join(
        voc_devkit, 'VOC2007', 'JPEGImages', ids[0] + '.jpg')


def test_missing_folder_names_the_path(tmp_path):
    missing = str(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError, match='folder .*nowhere.* does '
                       'not exist; check img_dir='):
        _unlabelled(img_dir=missing)
    with pytest.raises(FileNotFoundError, match='img_list file .*nope.txt'):
        _unlabelled(img_list=str(tmp_path / 'nope.txt'))


def test_empty_folder_or_list_names_the_source(tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(ValueError, match='empty.* holds no image'):
        _unlabelled(img_dir=str(empty))
    lst = tmp_path / 'empty.txt'
    lst.write_text('\n# nothing\n')
    with pytest.raises(ValueError, match='empty.txt.* holds no image'):
        _unlabelled(img_list=str(lst))


def test_listed_image_that_does_not_exist_is_an_error(folder, tmp_path):
    lst = tmp_path / 'list.txt'
    lst.write_text('a.jpg\ngone.jpg\n')
    with pytest.raises(FileNotFoundError, match='1 of the 2 images.*'
                       'gone.jpg'):
        _unlabelled(img_list=str(lst), data_root=str(folder))


def test_files_that_are_not_images_are_skipped_with_one_warning(folder):
    (folder / 'notes.txt').write_text('not an image')
    (folder / 'broken.jpg').write_bytes(b'\xff\xd8\xff garbage')
    _image(folder / 'anim.gif', 8, 8, fmt='GIF')  # OpenCV cannot decode it
    with pytest.warns(UnlabelledDataWarning) as record:
        ds = _unlabelled(img_dir=str(folder))
    assert len(record) == 1
    msg = str(record[0].message)
    assert 'skipped 3 of the 6 files' in msg
    for name in ('notes.txt', 'broken.jpg', 'anim.gif'):
        assert name in msg
    assert len(ds) == 3
    # a folder of nothing but non-images: the error says so
    bad = folder / 'bad'
    bad.mkdir()
    (bad / 'x.txt').write_text('x')
    with pytest.warns(UnlabelledDataWarning), \
            pytest.raises(ValueError, match='holds no image \\(1 files'):
        _unlabelled(img_dir=str(bad))


def test_an_image_that_fails_to_decode_later_is_replaced(folder):
    """Without the build-time check, a file OpenCV cannot decode is met in
    the pipeline: a warning names it, and another image comes instead."""
    (folder / 'broken.jpg').write_bytes(b'\xff\xd8\xff garbage')
    ds = _unlabelled(img_dir=str(folder), check_images=False)
    paths = [ds.get_data_info(i)['img_path'] for i in range(len(ds))]
    broken = paths.index(str(folder / 'broken.jpg'))
    with pytest.warns(UnlabelledDataWarning,
                      match='could not decode .*broken.jpg; another'):
        out = ds[broken]
    assert out['data_samples'].img_path != str(folder / 'broken.jpg')
    assert out['data_samples'].metainfo['unlabelled'] is True


def _voc_labelled(voc_devkit, split='trainval'):
    return dict(type='VOCDataset', data_root=voc_devkit,
                ann_file=f'VOC2007/ImageSets/Main/{split}.txt',
                data_prefix=dict(sub_data_root='VOC2007/'),
                filter_cfg=dict(filter_empty_gt=True, min_size=1),
                pipeline=DET_PIPELINE)


def test_overlap_with_the_labelled_set_warns_with_the_count(voc_devkit,
                                                            folder):
    init_default_scope('mmdet')
    split = osp.join(voc_devkit, 'VOC2007', 'ImageSets', 'Main',
                     'trainval.txt')
    with pytest.warns(UnlabelledDataWarning,
                      match=r'8 of the 8 unlabelled images are also in '
                      r'the labelled set \(8 images\)'):
        both = DATASETS.build(dict(
            type='mmlckd.WithUnlabelledImages',
            labelled=_voc_labelled(voc_devkit),
            unlabelled=dict(voc_split=split)))
    assert both.cumulative_sizes == [8, 16]
    # the labelled set's metainfo (classes) holds for both sources
    assert both.datasets[1].metainfo['classes'] == \
        both.datasets[0].metainfo['classes']
    # disjoint: no warning
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error', UnlabelledDataWarning)
        DATASETS.build(dict(type='mmlckd.WithUnlabelledImages',
                            labelled=_voc_labelled(voc_devkit),
                            unlabelled=dict(img_dir=str(folder))))


def _student_cfg(voc_devkit, batch_size=2, model='mmlckd.LipschitzDistiller'):
    return Config(dict(
        default_scope='mmdet', model=dict(type=model),
        train_dataloader=dict(
            batch_size=batch_size, num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=True),
            batch_sampler=dict(type='AspectRatioBatchSampler'),
            dataset=_voc_labelled(voc_devkit))))


def test_config_key_sets_dataset_sampler_and_batch(voc_devkit, folder):
    cfg = _student_cfg(voc_devkit)
    cfg.unlabelled_images = dict(img_dir=str(folder), ratio=1.5)
    prepare_distill_cfg(cfg)
    loader = cfg.train_dataloader
    assert 'unlabelled_images' not in cfg
    assert loader.batch_size == 5  # 2 labelled + round(1.5 * 2)
    assert loader.batch_sampler is None
    assert loader.sampler == dict(type='mmdet.MultiSourceSampler',
                                  batch_size=5, source_ratio=[2, 3],
                                  shuffle=True)
    assert loader.dataset.type == 'mmlckd.WithUnlabelledImages'
    assert loader.dataset.labelled.type == 'VOCDataset'
    assert loader.dataset.unlabelled == dict(img_dir=str(folder))

    cfg = _student_cfg(voc_devkit)
    cfg.unlabelled_images = dict(img_dir=str(folder), per_batch=1)
    add_unlabelled_images(cfg)
    assert cfg.train_dataloader.sampler.source_ratio == [2, 1]

    cfg = _student_cfg(voc_devkit, model='RetinaNet')
    cfg.unlabelled_images = dict(img_dir=str(folder))
    with pytest.raises(ValueError, match='needs model type mmlckd.Lipschitz'
                       'Distiller.*background'):
        prepare_distill_cfg(cfg)
    cfg = _student_cfg(voc_devkit)
    cfg.unlabelled_images = dict(img_dir=str(folder), ratio=0.1)
    with pytest.raises(ValueError, match='2 labelled and 0 unlabelled'):
        prepare_distill_cfg(cfg)


def test_every_batch_has_the_configured_mix(voc_devkit, folder):
    """Through mmengine's dataloader builder: 2 labelled then 3
    unlabelled images in every batch, and the same order again from the
    same seed (what mmengine's resume replays). The labelled set is a
    ConcatDataset (VOC07 + VOC12), as in the stock VOC0712 configs."""
    from mmengine.runner import Runner
    cfg = _student_cfg(voc_devkit)
    voc12 = _voc_labelled(voc_devkit)
    voc12.update(ann_file='VOC2012/ImageSets/Main/trainval.txt',
                 data_prefix=dict(sub_data_root='VOC2012/'))
    cfg.train_dataloader.dataset = dict(
        type='ConcatDataset', ignore_keys=['dataset_type'],
        datasets=[_voc_labelled(voc_devkit), voc12])
    cfg.unlabelled_images = dict(img_dir=str(folder), ratio=1.5)
    prepare_distill_cfg(cfg)
    init_default_scope('mmdet')

    def batches(n, seed):
        loader = Runner.build_dataloader(cfg.train_dataloader, seed=seed)
        it = iter(loader)
        return [next(it) for _ in range(n)]

    first = batches(4, seed=3)
    seen = set()
    for batch in first:
        flags = [ds.metainfo.get('unlabelled', False)
                 for ds in batch['data_samples']]
        assert flags == [False, False, True, True, True]
        seen |= {ds.img_path for ds in batch['data_samples'][2:]}
    assert len(seen) == 3  # every unlabelled image, cycled
    again = batches(4, seed=3)
    assert [[ds.img_path for ds in b['data_samples']] for b in first] == \
        [[ds.img_path for ds in b['data_samples']] for b in again]


def test_segmentation_config_gets_the_same_mix(voc_devkit, folder):
    """mmseg: the same config key, mmdet's sampler by its scoped name,
    the labelled pipeline with an ignore map for the unlabelled images."""
    from mmengine.runner import Runner
    cfg = Config(dict(
        default_scope='mmseg', model=dict(type='mmlckd.LipschitzDistiller'),
        train_dataloader=dict(
            batch_size=2, num_workers=0,
            sampler=dict(type='InfiniteSampler', shuffle=True),
            dataset=dict(
                type='PascalVOCDataset',
                data_root=osp.join(voc_devkit, 'VOC2012'),
                data_prefix=dict(img_path='JPEGImages',
                                 seg_map_path='SegmentationClass'),
                ann_file='ImageSets/Segmentation/train.txt',
                pipeline=SEG_PIPELINE)),
        unlabelled_images=dict(img_dir=str(folder))))
    prepare_distill_cfg(cfg)
    init_default_scope('mmseg')
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    batch = next(iter(loader))
    flags = [ds.metainfo.get('unlabelled', False)
             for ds in batch['data_samples']]
    assert flags == [False, False, True, True]
    for ds, img in zip(batch['data_samples'][2:], batch['inputs'][2:]):
        assert bool((ds.gt_sem_seg.data == 255).all())
        assert ds.gt_sem_seg.data.shape[-2:] == img.shape[-2:]
    # the labelled maps are real labels
    assert not bool((batch['data_samples'][0].gt_sem_seg.data == 255).all())
