"""Images without annotations, from a folder, a list or a VOC split."""
import os
import os.path as osp
import warnings
from typing import List, Optional, Sequence, Union

from mmengine.dataset import BaseDataset

from mmlckd.registry import DATASETS
from mmlckd.structures import UNLABELLED

__all__ = ['UnlabelledImageDataset', 'UnlabelledDataWarning']

#: the image formats OpenCV (mmcv's default image backend) decodes, by the
#: names Pillow gives them
DECODABLE = ('JPEG', 'PNG', 'BMP', 'TIFF', 'WEBP', 'PPM', 'MPO')
_MAX_NAMED = 10


class UnlabelledDataWarning(UserWarning):
    """A problem with the unlabelled images that training survives."""


def some_names(paths: Sequence[str]) -> str:
    """The first paths of a list, and how many more there are."""
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
                f'{some_names(missing)}; fix the paths (relative ones are read '
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
                f'images: {some_names(skipped)}'), stacklevel=2)
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
