"""A training set that mmdet would silently shrink or empty."""
import os.path as osp
from typing import List

from mmengine.config import Config

from mmlckd.utils.config import nested_datasets

__all__ = ['empty_after_filter', 'check_empty_ann_files',
           'unknown_class_annotations']


def empty_after_filter(cfg) -> str:
    """The message for a training set that its dataset's filter emptied
    (mmengine: "need at least one array to concatenate")."""
    data = next((d for d in nested_datasets(
        (cfg.get('train_dataloader', None) or {}).get('dataset', None))
        if 'ann_file' in d), {})
    return (f'the training set is empty: every image listed in '
            f'{data.get("ann_file", "its ann_file")!r} (data_root '
            f'{data.get("data_root", "")!r}) was dropped by the dataset\'s '
            f'filter (filter_cfg={data.get("filter_cfg", None)}): mmdet '
            'drops the images without a box of the dataset\'s classes. '
            'Check the class names in the annotations against the '
            'dataset\'s classes (metainfo), or set '
            'filter_cfg.filter_empty_gt=False to keep images without boxes.')


def check_empty_ann_files(cfg: Config) -> None:
    """An image-set list (``ann_file`` ``*.txt``) with no image id is an
    error naming the file (mmengine fails later with "need at least one
    array to concatenate")."""
    loader = cfg.get('train_dataloader', None) or {}
    for d in nested_datasets(loader.get('dataset', None)):
        ann = d.get('ann_file', None)
        if not isinstance(ann, str) or not ann.endswith('.txt'):
            continue
        root = d.get('data_root', None) or ''
        path = ann if osp.isabs(ann) or not root else osp.join(root, ann)
        if not osp.isfile(path):
            continue
        with open(path, encoding='utf-8', errors='replace') as f:
            empty = not any(line.strip() for line in f)
        if empty:
            raise SystemExit(
                f'error: the image-set file {path!r} (train_dataloader '
                'ann_file) lists no image: it is empty. Fill it with one '
                'image id per line (the names of the Annotations/*.xml '
                'files without .xml), or point ann_file at another list.')


def _xml_datasets(dataset) -> list:
    try:
        from mmdet.datasets import XMLDataset
    except ImportError:  # no mmdet
        return []
    return [d for d in nested_datasets(dataset) if isinstance(d, XMLDataset)]


def unknown_class_annotations(dataset) -> List[str]:
    """One message per VOC-style (XML) dataset in ``dataset`` whose
    annotations name classes that are not the dataset's: mmdet drops those
    boxes, and the images left without a box, without a word."""
    import collections
    import difflib
    import xml.etree.ElementTree as ET
    from mmengine.fileio import list_from_file
    msgs = []
    for ds in _xml_datasets(dataset):
        classes = list(ds.metainfo.get('classes', None) or [])
        if not classes:
            continue
        names = collections.Counter()
        boxes, images, emptied, example = 0, 0, 0, None
        for img_id in list_from_file(ds.ann_file):
            xml = osp.join(ds.sub_data_root, ds.ann_subdir, f'{img_id}.xml')
            try:
                objs = ET.parse(xml).getroot().findall('object')
            except (OSError, ET.ParseError):
                continue
            images += 1
            found = [o.findtext('name', '') for o in objs]
            boxes += len(found)
            bad = [n for n in found if n not in classes]
            if bad:
                names.update(bad)
                example = example or xml
                emptied += len(bad) == len(found)
        if not names:
            continue
        hints = []
        for n in names:
            close = difflib.get_close_matches(
                n.replace(' ', ''), classes, n=1, cutoff=0.6)
            if close:
                hints.append(f'{n!r} -> {close[0]!r}?')
        n_bad = sum(names.values())
        msgs.append(
            f'the annotations of {ds.ann_file} hold {n_bad} boxes of '
            f'classes that are not among the dataset\'s {len(classes)} '
            f'classes: {dict(names)} (e.g. in {example}); mmdet drops them '
            f'({images} images / {boxes} boxes read, {n_bad} boxes dropped, '
            f'{emptied} images left without a box, dropped with '
            'filter_empty_gt). Fix the names in the XML files' +
            (f' ({", ".join(hints)})' if hints else '') +
            ", or add the classes to the dataset's metainfo.")
    return msgs
