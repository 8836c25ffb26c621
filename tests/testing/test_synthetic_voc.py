"""Tests for mmlckd.testing.make_synthetic_voc (+ mmdet / mmseg round trip)."""
import hashlib
import importlib.util
import json
import os
import os.path as osp
import re

import numpy as np
import pytest
from PIL import Image

from mmlckd.testing import (CLASS_STYLES, MANIFEST_NAME, VOC_CLASSES,
                             VOC_PALETTE, DatasetExistsError,
                             make_synthetic_voc, parse_voc_xml)

from tool_modules import load_tool
TINY = dict(
    num_trainval_07=3,
    num_test_07=2,
    num_trainval_12=4,
    num_val_12=1,
    img_size=48,
    max_objects=3)


# ----------------------------------------------------------------- helpers
def read_list(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def tree_hash(root):
    """sha256 over every file (relative path + bytes) under ``root``."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = osp.join(dirpath, name)
            h.update(osp.relpath(path, root).encode() + b'\0')
            with open(path, 'rb') as f:
                h.update(f.read())
    return h.hexdigest()


def year_dir(devkit, year):
    return osp.join(devkit, f'VOC{year}')


def all_ids(devkit, year):
    return sorted(
        n[:-4] for n in os.listdir(osp.join(year_dir(devkit, year),
                                            'JPEGImages')))


def segmented_ids(devkit, year):
    return sorted(n[:-4] for n in os.listdir(
        osp.join(year_dir(devkit, year), 'SegmentationClass')))


def load_png(path):
    with Image.open(path) as im:
        return im.mode, im.getpalette(), np.array(im)


# ------------------------------------------------------------------ layout
def test_layout_and_counts(voc_summary):
    devkit = voc_summary['devkit']
    assert osp.isfile(osp.join(voc_summary['root'], MANIFEST_NAME))
    assert voc_summary['reused'] is False
    assert voc_summary['num_images'] == 12 + 8

    # VOC2007
    d07 = year_dir(devkit, 2007)
    m = osp.join(d07, 'ImageSets', 'Main')
    tv, tr, va, te = (read_list(osp.join(m, f'{s}.txt'))
                      for s in ('trainval', 'train', 'val', 'test'))
    assert (len(tv), len(te)) == (8, 4)
    assert sorted(tr + va) == tv and not set(tr) & set(va)
    assert not set(tv) & set(te)
    assert sorted(tv + te) == all_ids(devkit, 2007)
    assert all(re.fullmatch(r'\d{6}', i) for i in tv + te)
    for lst in (tv, tr, va, te):
        assert lst == sorted(lst)
    s = osp.join(d07, 'ImageSets', 'Segmentation')
    assert read_list(osp.join(s, 'trainval.txt')) == tv
    assert read_list(osp.join(s, 'test.txt')) == te
    assert segmented_ids(devkit, 2007) == sorted(tv + te)
    assert not osp.exists(osp.join(d07, 'SegmentationClassAug'))

    # VOC2012
    d12 = year_dir(devkit, 2012)
    m = osp.join(d12, 'ImageSets', 'Main')
    tv12, tr12, va12 = (read_list(osp.join(m, f'{s}.txt'))
                        for s in ('trainval', 'train', 'val'))
    assert (len(tv12), len(va12), len(tr12)) == (8, 4, 4)
    assert sorted(tr12 + va12) == tv12 == all_ids(devkit, 2012)
    assert all(re.fullmatch(r'2012_\d{6}', i) for i in tv12)
    assert not set(tv12) & set(tv + te)  # ids unique across years
    s = osp.join(d12, 'ImageSets', 'Segmentation')
    seg = {
        k: read_list(osp.join(s, f'{k}.txt'))
        for k in ('train', 'val', 'trainval', 'aug', 'trainaug')
    }
    assert seg['val'] == va12
    assert set(seg['train']) < set(tr12)
    assert sorted(seg['train'] + seg['val']) == seg['trainval']
    # mmseg converter semantics: aug = SBD ids - train - val (non-empty here)
    assert seg['aug'] and not set(seg['aug']) & (set(va12) | set(seg['train']))
    assert sorted(seg['train'] + seg['aug']) == seg['trainaug'] == tr12
    assert segmented_ids(devkit, 2012) == seg['trainval']
    aug_pngs = sorted(n[:-4] for n in os.listdir(
        osp.join(d12, 'SegmentationClassAug')))
    assert aug_pngs == tv12  # SBD-style labels for every 2012 image
    for year, ids in ((2007, tv + te), (2012, seg['trainval'])):
        objs = sorted(n[:-4] for n in os.listdir(
            osp.join(year_dir(devkit, year), 'SegmentationObject')))
        assert objs == sorted(ids)

    assert voc_summary['VOC2007']['main'] == dict(
        trainval=8, train=len(tr), val=len(va), test=4)
    assert voc_summary['VOC2012']['segmentation']['aug'] == len(seg['aug'])


def test_per_class_lists(voc_devkit):
    for year, split in ((2007, 'test'), (2012, 'trainval')):
        main = osp.join(year_dir(voc_devkit, year), 'ImageSets', 'Main')
        ids = read_list(osp.join(main, f'{split}.txt'))
        anns = {
            i: parse_voc_xml(
                osp.join(year_dir(voc_devkit, year), 'Annotations', f'{i}.xml'))
            for i in ids
        }
        for cls in VOC_CLASSES:
            with open(osp.join(main, f'{cls}_{split}.txt')) as f:
                rows = [line.split() for line in f]
            assert [r[0] for r in rows] == ids
            for img_id, flag in rows:
                d = [o['difficult'] for o in anns[img_id]['objects']
                     if o['name'] == cls]
                want = -1 if not d else (0 if all(d) else 1)
                assert int(flag) == want


# --------------------------------------------------------- annotations
def test_xml_boxes_inside_images(voc_devkit):
    n_obj = n_difficult = 0
    for year in (2007, 2012):
        d = year_dir(voc_devkit, year)
        segmented = set(segmented_ids(voc_devkit, year))
        for img_id in all_ids(voc_devkit, year):
            ann = parse_voc_xml(osp.join(d, 'Annotations', f'{img_id}.xml'))
            with Image.open(osp.join(d, 'JPEGImages', f'{img_id}.jpg')) as im:
                assert im.mode == 'RGB' and im.format == 'JPEG'
                assert im.size == (ann['width'], ann['height'])
            assert 64 <= ann['width'] <= 96 and 64 <= ann['height'] <= 96
            assert ann['filename'] == f'{img_id}.jpg'
            assert ann['segmented'] == int(img_id in segmented)
            assert 1 <= len(ann['objects']) <= 4
            for o in ann['objects']:
                assert o['name'] in VOC_CLASSES
                assert o['difficult'] in (0, 1) and o['truncated'] == 0
                x1, y1, x2, y2 = o['bbox']
                assert 1 <= x1 <= x2 <= ann['width']
                assert 1 <= y1 <= y2 <= ann['height']
                if not o['difficult']:  # "not too tiny"
                    assert max(x2 - x1, y2 - y1) + 1 >= 12
                n_obj += 1
                n_difficult += o['difficult']
    assert n_obj > 20
    assert 0 < n_difficult < 0.35 * n_obj  # a small fraction is difficult


def test_xml_format(voc_devkit):
    path = osp.join(year_dir(voc_devkit, 2007), 'Annotations', '000001.xml')
    import xml.etree.ElementTree as ET
    root = ET.parse(path).getroot()
    assert root.tag == 'annotation'
    assert root.find('folder').text == 'VOC2007'
    assert root.find('size/depth').text == '3'
    obj = root.find('object')
    for tag in ('name', 'pose', 'truncated', 'difficult', 'bndbox/xmin',
                'bndbox/ymin', 'bndbox/xmax', 'bndbox/ymax'):
        assert obj.find(tag) is not None, tag


# ---------------------------------------------------------- segmentation
def test_masks_consistent_with_boxes(voc_devkit):
    n_void_imgs = 0
    for year in (2007, 2012):
        d = year_dir(voc_devkit, year)
        for img_id in segmented_ids(voc_devkit, year):
            ann = parse_voc_xml(osp.join(d, 'Annotations', f'{img_id}.xml'))
            mode, pal, cls_map = load_png(
                osp.join(d, 'SegmentationClass', f'{img_id}.png'))
            omode, opal, obj_map = load_png(
                osp.join(d, 'SegmentationObject', f'{img_id}.png'))
            assert mode == omode == 'P'
            assert cls_map.shape == (ann['height'], ann['width'])
            assert (np.array(pal[:768]).reshape(256, 3) == VOC_PALETTE).all()
            assert opal == pal
            void = cls_map == 255
            assert (void == (obj_map == 255)).all()
            n_void_imgs += bool(void.any())

            idx = [CLASS_STYLES[o['name']]['index'] for o in ann['objects']]
            present = set(np.unique(cls_map).tolist()) - {0, 255}
            assert present == set(idx)  # every object keeps labelled pixels
            assert set(np.unique(obj_map).tolist()) - {0, 255} == set(
                range(1, len(idx) + 1))

            union = {c: np.zeros_like(void) for c in idx}
            for k, (o, c) in enumerate(zip(ann['objects'], idx)):
                x1, y1, x2, y2 = (v - 1 for v in o['bbox'])  # 0-based incl.
                inbox = np.zeros_like(void)
                inbox[y1:y2 + 1, x1:x2 + 1] = True
                union[c] |= inbox
                ys, xs = np.nonzero(obj_map == k + 1)
                # object pixels lie in its box; the box is tight (each edge
                # row / column holds this object's pixels or void ones)
                assert inbox[ys, xs].all()
                mine = ((obj_map == k + 1) | void)[y1:y2 + 1, x1:x2 + 1]
                assert mine[0].any() and mine[-1].any()
                assert mine[:, 0].any() and mine[:, -1].any()
                assert (cls_map[ys, xs] == c).all()
            for c, u in union.items():
                assert u[cls_map == c].all()
            # void only along object boundaries: every void pixel lies
            # within 1 px of a box, and every object touches void
            near = np.zeros_like(void)
            for o in ann['objects']:
                x1, y1, x2, y2 = o['bbox']  # 1-based -> expand by 1 px
                near[max(y1 - 2, 0):y2 + 1, max(x1 - 2, 0):x2 + 1] = True
            assert near[void].all()
            for k in range(len(idx)):
                ring = np.pad(obj_map == k + 1, 1)
                ring = ring[:-2, 1:-1] | ring[2:, 1:-1] | ring[1:-1, :-2] | \
                    ring[1:-1, 2:]
                assert void[ring].any()
    assert n_void_imgs > 0


def test_segmentation_class_aug(voc_devkit):
    d = year_dir(voc_devkit, 2012)
    segmented = set(segmented_ids(voc_devkit, 2012))
    for img_id in all_ids(voc_devkit, 2012):
        ann = parse_voc_xml(osp.join(d, 'Annotations', f'{img_id}.xml'))
        mode, _, aug = load_png(
            osp.join(d, 'SegmentationClassAug', f'{img_id}.png'))
        assert mode == 'L' and aug.shape == (ann['height'], ann['width'])
        assert 255 not in aug  # SBD labels carry no void band
        idx = [CLASS_STYLES[o['name']]['index'] for o in ann['objects']]
        assert set(np.unique(aug).tolist()) - {0} == set(idx)
        for o, c in zip(ann['objects'], idx):
            x1, y1, x2, y2 = (v - 1 for v in o['bbox'])
            box = aug[y1:y2 + 1, x1:x2 + 1] == c
            # tight: every edge row / column of the box hits the class
            assert box[0].any() and box[-1].any()
            assert box[:, 0].any() and box[:, -1].any()
        for c in set(idx):  # union of same-class boxes is tight
            ys, xs = np.nonzero(aug == c)
            boxes = np.array([
                o['bbox'] for o in ann['objects']
                if CLASS_STYLES[o['name']]['index'] == c
            ])
            assert boxes[:, 0].min() == xs.min() + 1
            assert boxes[:, 1].min() == ys.min() + 1
            assert boxes[:, 2].max() == xs.max() + 1
            assert boxes[:, 3].max() == ys.max() + 1
        if img_id in segmented:
            _, _, cls_map = load_png(
                osp.join(d, 'SegmentationClass', f'{img_id}.png'))
            keep = cls_map != 255
            assert (cls_map[keep] == aug[keep]).all()


def test_palette_is_voc():
    assert VOC_PALETTE.shape == (256, 3) and VOC_PALETTE.dtype == np.uint8
    expected = {
        0: (0, 0, 0),
        1: (128, 0, 0),
        2: (0, 128, 0),
        3: (128, 128, 0),
        4: (0, 0, 128),
        8: (64, 0, 0),
        12: (64, 0, 128),
        15: (192, 128, 128),
        20: (0, 64, 128),
        255: (224, 224, 192)
    }
    for i, rgb in expected.items():
        assert tuple(VOC_PALETTE[i].tolist()) == rgb, i
    if importlib.util.find_spec('mmseg') is not None:
        from mmseg.datasets import PascalVOCDataset
        pal = PascalVOCDataset.METAINFO['palette']
        assert [list(p) for p in pal] == VOC_PALETTE[:21].tolist()


def test_pixels_follow_class_styles(voc_devkit):
    """Objects are drawn in their class colour on a grey-ish background."""
    styles = list(CLASS_STYLES.values())
    colours = np.array([s['color'] for s in styles], dtype=float)
    assert len({s['color'] for s in styles}) == 20
    assert len({(s['shape'], s['color']) for s in styles}) == 20
    hues = sorted(s['hue'] for s in styles)
    assert min(np.diff(hues + [hues[0] + 360])) >= 18
    d = year_dir(voc_devkit, 2007)
    for img_id in segmented_ids(voc_devkit, 2007):
        img = np.asarray(
            Image.open(osp.join(d, 'JPEGImages', f'{img_id}.jpg')), float)
        _, _, cls_map = load_png(
            osp.join(d, 'SegmentationClass', f'{img_id}.png'))
        for c in set(np.unique(cls_map).tolist()) - {0, 255}:
            mean = img[cls_map == c].mean(0)
            dist = np.abs(colours - mean).sum(1)
            assert dist.argmin() + 1 == c  # nearest class colour
            assert dist[c - 1] < 60
        bg = img[cls_map == 0]
        assert (bg.max(1) - bg.min(1)).mean() < 40  # low saturation


# ------------------------------------------------- determinism / reuse
def test_deterministic(voc_summary, tmp_path):
    args = json.load(open(voc_summary['manifest']))['args']
    assert args['seed'] == 0
    again = make_synthetic_voc(
        str(tmp_path / 'again'),
        **{k: v for k, v in args.items() if k != 'img_size'},
        img_size=tuple(map(tuple, args['img_size'])))
    assert again['reused'] is False
    assert tree_hash(again['devkit']) == tree_hash(voc_summary['devkit'])
    with open(again['manifest'], 'rb') as f1, open(voc_summary['manifest'],
                                                   'rb') as f2:
        assert f1.read() == f2.read()

    a = make_synthetic_voc(str(tmp_path / 'a'), seed=1, **TINY)
    b = make_synthetic_voc(str(tmp_path / 'b'), seed=2, **TINY)
    ha, hb = tree_hash(a['devkit']), tree_hash(b['devkit'])
    assert ha != hb
    jpg = 'VOC2007/JPEGImages/000001.jpg'
    with open(osp.join(a['devkit'], jpg), 'rb') as fa, open(
            osp.join(b['devkit'], jpg), 'rb') as fb:
        assert fa.read() != fb.read()


def test_reuse_overwrite_and_errors(tmp_path):
    root = str(tmp_path / 'voc')
    first = make_synthetic_voc(root, **TINY)
    assert first['reused'] is False
    h = tree_hash(first['devkit'])
    jpg = osp.join(first['devkit'], 'VOC2007', 'JPEGImages', '000001.jpg')
    mtime = os.stat(jpg).st_mtime_ns

    again = make_synthetic_voc(root, **TINY)
    assert again['reused'] is True
    assert again['VOC2007'] == first['VOC2007']
    assert os.stat(jpg).st_mtime_ns == mtime and tree_hash(
        first['devkit']) == h

    # different arguments: clear error, nothing touched
    with pytest.raises(DatasetExistsError, match='seed.*overwrite=True'):
        make_synthetic_voc(root, **{**TINY, 'seed': 5})
    assert tree_hash(first['devkit']) == h

    # overwrite=True regenerates with the new arguments
    other = make_synthetic_voc(
        root, **{
            **TINY, 'seed': 5,
            'num_test_07': 3
        }, overwrite=True)
    assert other['reused'] is False and other['VOC2007']['main']['test'] == 3
    assert len(os.listdir(osp.dirname(jpg))) == 6
    assert tree_hash(other['devkit']) != h
    assert json.load(open(other['manifest']))['args']['seed'] == 5

    # damaged tree (same args) is regenerated, not reused
    os.remove(jpg)
    fixed = make_synthetic_voc(root, **{**TINY, 'seed': 5, 'num_test_07': 3})
    assert fixed['reused'] is False and osp.isfile(jpg)

    # an interrupted run (manifest still 'incomplete') is regenerated
    man = json.load(open(fixed['manifest']))
    man['status'] = 'incomplete'
    json.dump(man, open(fixed['manifest'], 'w'))
    assert make_synthetic_voc(root, **TINY, overwrite=False)['reused'] is False

    # a VOCdevkit that is not ours is never reused nor deleted
    foreign = tmp_path / 'foreign'
    (foreign / 'VOCdevkit' / 'VOC2007').mkdir(parents=True)
    user_file = foreign / 'VOCdevkit' / 'VOC2007' / 'precious.txt'
    user_file.write_text('keep me')
    for overwrite in (False, True):
        with pytest.raises(DatasetExistsError, match='not generated by'):
            make_synthetic_voc(str(foreign), **TINY, overwrite=overwrite)
    assert user_file.read_text() == 'keep me'

    # other files next to VOCdevkit are left alone
    shared = tmp_path / 'shared'
    shared.mkdir()
    (shared / 'notes.txt').write_text('x')
    make_synthetic_voc(str(shared), **TINY)
    assert (shared / 'notes.txt').read_text() == 'x'


@pytest.mark.parametrize(
    'kwargs, exc',
    [
        (dict(classes=['cat', 'unicorn']), ValueError),
        (dict(classes=['cat', 'cat']), ValueError),
        (dict(num_val_12=9, num_trainval_12=8), ValueError),
        (dict(img_size=(16, 16)), ValueError),  # too small
        (dict(img_size=((90, 80), (64, 64))), ValueError),  # min > max
        (dict(img_size='big'), ValueError),
        (dict(max_objects=0), ValueError),
        (dict(num_test_07=-1), ValueError),
        (dict(num_test_07=1.5), TypeError),
        (dict(num_aug_extra_12=99), ValueError),
    ])
def test_invalid_arguments(tmp_path, kwargs, exc):
    with pytest.raises(exc):
        make_synthetic_voc(str(tmp_path / 'x'), **{**TINY, **kwargs})
    assert not (tmp_path / 'x').exists()


def test_class_subset_and_sizes(tmp_path):
    s = make_synthetic_voc(
        str(tmp_path / 'sub'),
        **{
            **TINY, 'img_size': (80, 56),
            'classes': ['cat', 'dog']
        },
        num_aug_extra_12=0)
    assert s['classes'] == ['cat', 'dog']
    assert s['VOC2012']['segmentation']['aug'] == 0
    for year in (2007, 2012):
        d = year_dir(s['devkit'], year)
        for img_id in all_ids(s['devkit'], year):
            ann = parse_voc_xml(osp.join(d, 'Annotations', f'{img_id}.xml'))
            assert (ann['width'], ann['height']) == (80, 56)
            assert {o['name'] for o in ann['objects']} <= {'cat', 'dog'}
        for img_id in segmented_ids(s['devkit'], year):
            _, _, m = load_png(
                osp.join(d, 'SegmentationClass', f'{img_id}.png'))
            # official VOC indices: cat 8, dog 12
            assert set(np.unique(m).tolist()) <= {0, 8, 12, 255}


def test_cli(tmp_path, capsys):
    cli = load_tool('make_synthetic_voc')
    argv = [
        str(tmp_path / 'cli'), '--trainval-07', '2', '--test-07', '1',
        '--trainval-12', '2', '--val-12', '1', '--img-size-range', '40', '50',
        '--classes', 'cat', 'bus', '--seed', '3'
    ]
    summary = cli.main(argv)
    out = capsys.readouterr().out
    assert out.startswith('wrote synthetic VOC dataset in')
    assert 'VOC2007: 3 images' in out and 'classes: cat, bus' in out
    assert summary['classes'] == ['cat', 'bus']
    args = json.load(open(summary['manifest']))['args']
    assert args['img_size'] == [[40, 50], [40, 50]] and args['seed'] == 3
    cli.main(argv)
    assert capsys.readouterr().out.startswith('reused existing')
    with pytest.raises(SystemExit, match='different arguments'):
        cli.main(argv[:-1] + ['4'])
    assert cli.parse_args(['r', '--img-size', '64', '48']).img_size == (64,
                                                                        48)
    assert cli.parse_args(['r', '--img-size', '64']).img_size == 64


# -------------------------------------------------- mmdet round trip
def _mmdet_or_skip():
    pytest.importorskip(
        'mmdet',
        reason='mmdet not importable: VOCDataset/VOCMetric round trip '
        'skipped')
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')


def _det_pipeline():
    return [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='PackDetInputs')
    ]


def _build_det(devkit, year, split, test_mode=True):
    from mmdet.registry import DATASETS
    return DATASETS.build(
        dict(
            type='VOCDataset',
            data_root=devkit + '/',
            ann_file=f'VOC{year}/ImageSets/Main/{split}.txt',
            data_prefix=dict(sub_data_root=f'VOC{year}/'),
            test_mode=test_mode,
            pipeline=_det_pipeline()))


@pytest.mark.parametrize('year, split', [(2007, 'trainval'), (2007, 'test'),
                                         (2012, 'trainval')])
def test_mmdet_voc_dataset_loads(voc_devkit, year, split):
    _mmdet_or_skip()
    ds = _build_det(voc_devkit, year, split, test_mode=False)
    ids = read_list(
        osp.join(year_dir(voc_devkit, year), 'ImageSets', 'Main',
                 f'{split}.txt'))
    assert len(ds) == len(ids)
    assert ds.metainfo['dataset_type'] == f'VOC{year}'
    classes = ds.metainfo['classes']
    assert tuple(classes) == VOC_CLASSES
    n_ignored = 0
    for i, img_id in enumerate(ids):
        out = ds[i]
        sample = out['data_samples']
        ann = parse_voc_xml(
            osp.join(year_dir(voc_devkit, year), 'Annotations',
                     f'{img_id}.xml'))
        assert osp.basename(sample.img_path) == f'{img_id}.jpg'
        assert tuple(out['inputs'].shape) == (3, ann['height'], ann['width'])
        gt, ign = sample.gt_instances, sample.ignored_instances
        easy = [o for o in ann['objects'] if not o['difficult']]
        hard = [o for o in ann['objects'] if o['difficult']]
        assert len(gt) == len(easy) and len(ign) == len(hard)
        n_ignored += len(ign)
        for inst, objs in ((gt, easy), (ign, hard)):
            if not objs:
                continue
            want = np.array([o['bbox'] for o in objs], np.float32) - 1
            assert np.allclose(inst.bboxes.numpy(), want)
            assert inst.labels.tolist() == [
                classes.index(o['name']) for o in objs
            ]
    assert n_ignored == sum(
        o['difficult'] for i in ids for o in parse_voc_xml(
            osp.join(year_dir(voc_devkit, year), 'Annotations', f'{i}.xml'))
        ['objects'])


def test_mmdet_voc0712_concat(voc_devkit, voc_summary):
    _mmdet_or_skip()
    from mmdet.registry import DATASETS
    cfg = dict(
        type='ConcatDataset',
        ignore_keys=['dataset_type'],
        datasets=[
            dict(
                type='VOCDataset',
                data_root=voc_devkit + '/',
                ann_file=f'VOC{y}/ImageSets/Main/trainval.txt',
                data_prefix=dict(sub_data_root=f'VOC{y}/'),
                filter_cfg=dict(filter_empty_gt=True, min_size=32),
                pipeline=_det_pipeline()) for y in (2007, 2012)
        ])
    ds = DATASETS.build(cfg)
    assert len(ds) == voc_summary['VOC2007']['main']['trainval'] + \
        voc_summary['VOC2012']['main']['trainval']
    assert len(ds[len(ds) - 1]['data_samples'].gt_instances) + len(
        ds[len(ds) - 1]['data_samples'].ignored_instances) >= 1


def _voc_map(ds, eval_mode, make_pred):
    from mmdet.evaluation import VOCMetric
    from mmengine.structures import InstanceData
    metric = VOCMetric(eval_mode=eval_mode)
    metric.dataset_meta = ds.metainfo
    for i in range(len(ds)):
        sample = ds[i]['data_samples']
        bboxes, labels = make_pred(i, sample)
        sample.pred_instances = InstanceData(
            bboxes=bboxes, labels=labels, scores=bboxes.new_ones(len(bboxes)))
        metric.process({}, [sample.to_dict()])
    return metric.evaluate(len(ds))['pascal_voc/mAP']


@pytest.mark.parametrize('year, split, eval_mode', [
    (2007, 'test', '11points'),
    (2007, 'trainval', 'area'),
    (2012, 'trainval', 'area'),
])
def test_mmdet_voc_metric(voc_devkit, year, split, eval_mode):
    _mmdet_or_skip()
    import torch
    ds = _build_det(voc_devkit, year, split)

    def boxes(inst):  # HorizontalBoxes (mmdet >= 3.0 pipelines) -> Tensor
        b = inst.bboxes
        return (b.tensor if hasattr(b, 'tensor') else b).clone()

    def gt_only(i, s):
        return boxes(s.gt_instances), s.gt_instances.labels.clone()

    def gt_and_difficult(i, s):  # hits on ignored boxes are not FPs
        return (torch.cat([boxes(s.gt_instances),
                           boxes(s.ignored_instances)]),
                torch.cat([s.gt_instances.labels, s.ignored_instances.labels]))

    def shifted(i, s):  # every other image: boxes moved off their object
        b, lab = gt_only(i, s)
        if i % 2 == 0:
            w = b[:, 2] - b[:, 0] + 2
            b[:, 0] += w
            b[:, 2] += w
        return b, lab

    def shuffled(i, s):  # wrong class for every box
        b, lab = gt_only(i, s)
        return b, (lab + 1) % len(VOC_CLASSES)

    assert _voc_map(ds, eval_mode, gt_only) == pytest.approx(1.0)
    assert _voc_map(ds, eval_mode, gt_and_difficult) == pytest.approx(1.0)
    assert 0.0 < _voc_map(ds, eval_mode, shifted) < 0.95
    assert _voc_map(ds, eval_mode, shuffled) < 0.5


# -------------------------------------------------- mmseg round trip
def _mmseg_or_skip():
    pytest.importorskip(
        'mmseg',
        reason='mmseg not importable: PascalVOCDataset/IoUMetric round trip '
        'skipped')
    from mmengine.registry import init_default_scope
    init_default_scope('mmseg')


def _seg_cfg(devkit, ann, seg_dir='SegmentationClass'):
    return dict(
        type='PascalVOCDataset',
        data_root=osp.join(devkit, 'VOC2012'),
        data_prefix=dict(img_path='JPEGImages', seg_map_path=seg_dir),
        ann_file=f'ImageSets/Segmentation/{ann}.txt',
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations'),
            dict(type='PackSegInputs')
        ])


@pytest.mark.parametrize('ann, seg_dir', [('train', 'SegmentationClass'),
                                          ('val', 'SegmentationClass'),
                                          ('aug', 'SegmentationClassAug')])
def test_mmseg_voc_dataset_and_iou(voc_devkit, ann, seg_dir):
    _mmseg_or_skip()
    import torch
    from mmengine.structures import PixelData
    from mmseg.evaluation import IoUMetric
    from mmseg.registry import DATASETS
    ds = DATASETS.build(_seg_cfg(voc_devkit, ann, seg_dir))
    d12 = year_dir(voc_devkit, 2012)
    ids = read_list(osp.join(d12, 'ImageSets', 'Segmentation', f'{ann}.txt'))
    assert len(ds) == len(ids) > 0
    assert len(ds.metainfo['classes']) == 21
    samples = []
    for i, img_id in enumerate(ids):
        out = ds[i]
        s = out['data_samples']
        _, _, want = load_png(osp.join(d12, seg_dir, f'{img_id}.png'))
        got = s.gt_sem_seg.data.squeeze(0).numpy()
        assert got.shape == want.shape == tuple(out['inputs'].shape[1:])
        assert (got == want).all()
        assert (255 in got) == (seg_dir == 'SegmentationClass')
        samples.append(s)

    def miou(pred_fn):
        metric = IoUMetric(iou_metrics=['mIoU'])
        metric.dataset_meta = ds.metainfo
        for s in samples:
            s.pred_sem_seg = PixelData(data=pred_fn(s.gt_sem_seg.data))
            metric.process({}, [s.to_dict()])
        return metric.evaluate(len(samples))['mIoU']

    assert miou(lambda gt: gt.clone()) == pytest.approx(100.0)
    assert miou(torch.zeros_like) < 60.0  # all background
    assert miou(lambda gt: torch.where((gt > 0) & (gt < 255), gt % 20 + 1, gt)
                ) < 60.0  # every object pixel in the wrong class


def test_mmseg_voc12aug_config(voc_devkit, voc_summary):
    """The stock voc12aug layout: ConcatDataset(train + aug) == trainaug."""
    _mmseg_or_skip()
    from mmseg.registry import DATASETS
    ds = DATASETS.build(
        dict(
            type='ConcatDataset',
            datasets=[
                _seg_cfg(voc_devkit, 'train'),
                _seg_cfg(voc_devkit, 'aug', 'SegmentationClassAug')
            ]))
    seg = voc_summary['VOC2012']['segmentation']
    assert len(ds) == seg['trainaug'] == seg['train'] + seg['aug']
    names = sorted(
        osp.basename(ds[i]['data_samples'].img_path)[:-4]
        for i in range(len(ds)))
    assert names == read_list(
        osp.join(
            year_dir(voc_devkit, 2012), 'ImageSets', 'Segmentation',
            'trainaug.txt'))
