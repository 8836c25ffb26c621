"""A tiny, deterministic, *synthetic* PASCAL VOC (2007 + 2012 + SBD-aug).

The generated tree is laid out exactly like the official ``VOCdevkit`` release
(plus the ``SegmentationClassAug`` folder and split lists that MMSegmentation's
``tools/dataset_converters/voc_aug.py`` produces), so it can be read, without
any patch, by MMDetection's ``VOCDataset`` / ``VOCMetric`` and by
MMSegmentation's ``PascalVOCDataset`` / ``IoUMetric`` with their stock VOC
configs (``voc0712.py``, ``pascal_voc12.py``, ``pascal_voc12_aug.py``)::

    root/
      mmlckd_synthetic.json              # manifest: generator args + summary
      VOCdevkit/
        VOC2007/
          JPEGImages/000001.jpg ...
          Annotations/000001.xml ...
          ImageSets/Main/{trainval,train,val,test}.txt, <cls>_<split>.txt
          ImageSets/Segmentation/{trainval,train,val,test}.txt
          SegmentationClass/000001.png ...   # 'P' mode, VOC colour map
          SegmentationObject/000001.png ...  # 'P' mode, instance ids
        VOC2012/
          JPEGImages/2012_000001.jpg ...
          Annotations/2012_000001.xml ...
          ImageSets/Main/{trainval,train,val}.txt, <cls>_<split>.txt
          ImageSets/Segmentation/{train,val,trainval,aug,trainaug}.txt
          SegmentationClass/*.png            # 'P' mode, 255 void borders
          SegmentationObject/*.png           # 'P' mode, instance ids
          SegmentationClassAug/*.png         # 'L' mode indices (SBD style)

Content
-------
Every VOC class is a distinct (colour, shape) pair (see :data:`CLASS_STYLES`):
20 different hues (ten bright ones, ten dark ones, 18 degrees apart overall)
and five shapes (rectangle, ellipse, triangle, diamond, cross), drawn with hard
edges on a low-saturation, low-contrast textured background (gradient + smooth
noise + pixel noise). Each image holds ``1..max_objects`` objects with limited
overlap (later objects occlude earlier ones; every earlier object keeps at
least half of its area visible).

Policies
--------
* **Boxes = visible extent.** An object's box is the tight box around its
  *visible* pixels (after occlusion by later objects), in VOC's 1-based,
  inclusive pixel coordinates: ``xmin = first_col + 1``, ``xmax = last_col +
  1``. Hence every box contains all of its object's mask pixels and is tight.
* **Difficult** objects (``<difficult>1``) are the small ones (visible box's
  longer side < 12 px; about 6% of objects are drawn deliberately small) and
  the heavily occluded ones (< 65% of the object visible); ~12% overall.
* **Segmentation** (``SegmentationClass``): background 0, object pixels their
  *official* VOC class index (1..20, also when ``classes`` is a subset), and
  255 ("void") on a 2-px band along every object's visible boundary (one pixel
  on each side, like the real VOC void outline). Every object keeps at least
  one non-void pixel, so each XML object's class occurs in the PNG.
  ``SegmentationClassAug`` holds the same labels *without* the void band, as
  SBD's ``.mat`` -> ``.png`` conversion ships them. ``SegmentationObject``
  (as in real VOC) holds ``k + 1`` for the k-th ``<object>`` of the XML, 0
  for background and the same 255 void band.
* **Splits.** VOC2007: ``num_trainval_07`` + ``num_test_07`` images, ids
  ``000001``.. interleaved between trainval and test as in the real release;
  ``trainval`` is split half/half into ``train``/``val``; all 2007 images are
  segmented. VOC2012: ``num_trainval_12`` images with ids ``2012_000001``..;
  ``num_val_12`` of them form ``val`` (val is a *subset* of trainval, as in the
  real VOC2012), the rest ``train``. ``Segmentation/val`` = Main val;
  ``num_aug_extra_12`` train images are "SBD-only" (no ``SegmentationClass``
  PNG, ``<segmented>0``), the other train images form ``Segmentation/train``.
  ``SegmentationClassAug`` has a PNG for every 2012 image.
  ``Segmentation/aug.txt`` follows MMSegmentation's converter: SBD ids minus
  ``Segmentation/train`` minus ``Segmentation/val`` (the stock
  ``pascal_voc12_aug.py`` config concatenates ``train.txt`` with
  ``SegmentationClass`` and ``aug.txt`` with ``SegmentationClassAug``);
  ``Segmentation/trainaug.txt`` is the full "train_aug" list (all 2012 train
  ids, extras included, no val ids).

Everything is a pure function of the arguments (numpy ``default_rng`` seeded
per image), so equal arguments give byte-identical files.
"""
import colorsys
import json
import os
import os.path as osp
import shutil
import xml.etree.ElementTree as ET
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
from PIL import Image

__all__ = [
    'VOC_CLASSES', 'SHAPES', 'CLASS_STYLES', 'MANIFEST_NAME',
    'GENERATOR_VERSION', 'voc_colormap', 'VOC_PALETTE', 'make_synthetic_voc',
    'parse_voc_xml', 'DatasetExistsError'
]

VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
               'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse',
               'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train',
               'tvmonitor')
SHAPES = ('rectangle', 'ellipse', 'triangle', 'diamond', 'cross')
MANIFEST_NAME = 'mmlckd_synthetic.json'
GENERATOR_VERSION = 1

# Drawing constants (part of the format: changing them changes the data, so
# bump GENERATOR_VERSION together with them).
_SMALL_PROB = 0.06  # fraction of objects drawn deliberately small
_SMALL_SIDE = 12  # visible box longer side below this -> difficult
_OCCLUDED_FRAC = 0.65  # visible fraction below this -> difficult
_MIN_VISIBLE_FRAC = 0.5  # placement rejected if an object drops below this
_PLACE_ATTEMPTS = 30
_JPEG_QUALITY = 95
_MIN_IMG_SIDE = 32


def voc_colormap(n: int = 256) -> np.ndarray:
    """The official PASCAL VOC colour map (``VOCdevkit``'s ``labelcolormap``).

    Returns an ``(n, 3)`` uint8 array: 0 -> (0, 0, 0), 1 -> (128, 0, 0), ...,
    255 (void) -> (224, 224, 192).
    """
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


VOC_PALETTE = voc_colormap(256)
_PALETTE_LIST = VOC_PALETTE.reshape(-1).tolist()


def _make_class_styles() -> Dict[str, dict]:
    # Ten hues 36 degrees apart, ordered so that any prefix of the class list
    # (e.g. a 4-class demo subset) gets well separated hues: red, green, blue,
    # yellow, magenta, cyan, orange, azure, chartreuse, purple. Classes 10..19
    # use the same order shifted by 18 degrees and a dark value.
    hue_order = (0, 4, 7, 2, 9, 5, 1, 6, 3, 8)
    styles = {}
    for i, name in enumerate(VOC_CLASSES):
        group, j = divmod(i, 10)
        hue = hue_order[j] * 36.0 + 18.0 * group
        sat, val = (0.95, 1.0) if group == 0 else (1.0, 0.55)
        rgb = colorsys.hsv_to_rgb(hue / 360.0, sat, val)
        styles[name] = dict(
            index=i + 1,  # index in the segmentation maps (0 = background)
            shape=SHAPES[(j + 2 * group) % len(SHAPES)],
            color=tuple(int(round(255 * c)) for c in rgb),
            hue=hue)
    return styles


#: class name -> dict(index (1..20, the segmentation label), shape, color
#: (RGB), hue (degrees)). Every (shape, colour) pair is unique; so is every
#: colour.
CLASS_STYLES = _make_class_styles()


class DatasetExistsError(FileExistsError):
    """The target root holds data that :func:`make_synthetic_voc` must not
    reuse or delete."""


# ----------------------------------------------------------------- drawing
def _shape_mask(shape: str, w: int, h: int) -> np.ndarray:
    """Boolean ``(h, w)`` mask of ``shape`` inscribed in a ``w x h`` box."""
    u = (np.arange(w, dtype=np.float64) + 0.5) / w * 2.0 - 1.0  # [-1, 1]
    v = (np.arange(h, dtype=np.float64) + 0.5) / h * 2.0 - 1.0
    uu, vv = np.meshgrid(u, v)
    if shape == 'rectangle':
        return np.ones((h, w), dtype=bool)
    if shape == 'ellipse':
        return uu**2 + vv**2 <= 1.0
    if shape == 'triangle':  # apex at the top centre, base at the bottom
        return np.abs(uu) <= (vv + 1.0) / 2.0
    if shape == 'diamond':
        return np.abs(uu) + np.abs(vv) <= 1.0
    if shape == 'cross':  # bars one third of the box thick
        return (np.abs(uu) <= 1.0 / 3.0) | (np.abs(vv) <= 1.0 / 3.0)
    raise ValueError(f'unknown shape {shape!r}')


def _interior(inst: np.ndarray) -> np.ndarray:
    """Pixels whose whole 3x3 neighbourhood has their own instance id."""
    h, w = inst.shape
    pad = np.pad(inst, 1, mode='edge')
    same = np.ones((h, w), dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy == 1 and dx == 1:
                continue
            same &= pad[dy:dy + h, dx:dx + w] == inst
    return same


def _smooth_noise(rng: np.random.Generator, h: int, w: int,
                  cell: int) -> np.ndarray:
    """Bilinearly upsampled coarse Gaussian noise, roughly unit variance."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.standard_normal((gh, gw))
    ys = np.linspace(0, gh - 1.001, h)
    xs = np.linspace(0, gw - 1.001, w)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) * (1 - fy) + b * fx * (1 - fy) + c * (1 - fx) * fy +
            d * fx * fy)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.uniform(95, 165)
    tint = rng.uniform(-8, 8, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    amp = rng.uniform(8, 22)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = (np.cos(angle) * (xx / max(w - 1, 1) - 0.5) + np.sin(angle) *
            (yy / max(h - 1, 1) - 0.5))
    lum = base + 2 * amp * ramp + 7.0 * _smooth_noise(rng, h, w, 12)
    img = lum[..., None] + tint[None, None, :]
    img += rng.normal(0, 3.0, size=(h, w, 3))
    return img


def _place_objects(rng: np.random.Generator, w_img: int, h_img: int,
                   class_names: Sequence[str], max_objects: int):
    """Object shapes and places: the instance map (-1: background, k: the
    k-th object where visible) and ``dict(name, area)`` per object in
    drawing order."""
    inst = np.full((h_img, w_img), -1, dtype=np.int16)
    m = min(w_img, h_img)
    lo, hi = max(14.0, 0.2 * m), max(15.0, 0.5 * m)
    objects = []  # dict(name, area) in drawing order
    n_obj = int(rng.integers(1, max_objects + 1))
    for k in range(n_obj):
        name = class_names[int(rng.integers(len(class_names)))]
        shape = CLASS_STYLES[name]['shape']
        placed = False
        for _ in range(_PLACE_ATTEMPTS):
            small = rng.random() < _SMALL_PROB
            aspect = float(np.exp(rng.uniform(-0.35, 0.35)))
            if small:
                w = int(np.clip(round(rng.uniform(7, 11)), 7, 11))
                h = int(np.clip(round(w / aspect), 7, 11))
            else:
                base = rng.uniform(lo, hi)
                w = max(9, int(round(base * np.sqrt(aspect))))
                h = max(9, int(round(base / np.sqrt(aspect))))
            w, h = min(w, w_img - 2), min(h, h_img - 2)
            x0 = int(rng.integers(1, w_img - w))  # >= 1 px margin
            y0 = int(rng.integers(1, h_img - h))
            mask = _shape_mask(shape, w, h)
            cand = inst.copy()
            cand[y0:y0 + h, x0:x0 + w][mask] = k
            counts = np.bincount(cand.ravel() + 1, minlength=k + 2)[1:]
            if any(counts[j] < _MIN_VISIBLE_FRAC * o['area']
                   for j, o in enumerate(objects)):
                continue
            inner = np.bincount(
                cand[_interior(cand)].ravel() + 1, minlength=k + 2)[1:]
            if (inner[:k + 1] < 1).any():  # each object keeps a non-void px
                continue
            inst = cand
            objects.append(dict(name=name, area=int(mask.sum())))
            placed = True
            break
        if not placed and not objects:
            # Never leave an image empty: a plain centred object.
            w = h = int(min(lo, m - 4))
            x0, y0 = (w_img - w) // 2, (h_img - h) // 2
            mask = _shape_mask(shape, w, h)
            inst[y0:y0 + h, x0:x0 + w][mask] = 0
            objects.append(dict(name=name, area=int(mask.sum())))
    return inst, objects


def _labels(inst: np.ndarray, objects: List[dict]) -> dict:
    """The label maps and the annotated objects of an instance map."""
    h_img, w_img = inst.shape
    seg_aug = np.zeros((h_img, w_img), dtype=np.uint8)
    out_objects = []
    for k, obj in enumerate(objects):
        vis = inst == k
        cls_idx = CLASS_STYLES[obj['name']]['index']
        seg_aug[vis] = cls_idx
        ys, xs = np.nonzero(vis)
        xmin, xmax = int(xs.min()) + 1, int(xs.max()) + 1  # VOC: 1-based
        ymin, ymax = int(ys.min()) + 1, int(ys.max()) + 1
        visible_frac = float(vis.sum()) / obj['area']
        long_side = max(xmax - xmin + 1, ymax - ymin + 1)
        difficult = long_side < _SMALL_SIDE or visible_frac < _OCCLUDED_FRAC
        out_objects.append(
            dict(
                name=obj['name'],
                bbox=(xmin, ymin, xmax, ymax),
                difficult=int(difficult),
                visible_frac=round(visible_frac, 4)))
    void = ~_interior(inst)  # void band along every visible boundary
    seg = seg_aug.copy()
    seg[void] = 255
    seg_obj = (inst + 1).astype(np.uint8)
    seg_obj[void] = 255
    return dict(seg=seg, seg_obj=seg_obj, seg_aug=seg_aug,
                objects=out_objects)


def _render_image(rng: np.random.Generator, width: int, height: int,
                  class_names: Sequence[str], max_objects: int) -> dict:
    """Draw one image. Returns image, label maps and the object list."""
    w_img, h_img = width, height
    img = _background(rng, h_img, w_img)
    inst, objects = _place_objects(rng, w_img, h_img, class_names,
                                   max_objects)
    # Paint objects in drawing order (colours from the final visibility map).
    for k, obj in enumerate(objects):
        vis = inst == k
        color = np.asarray(CLASS_STYLES[obj['name']]['color'], np.float64)
        gain = rng.uniform(0.92, 1.06)
        shade = rng.uniform(-6, 6) * np.linspace(-1, 1, h_img)[:, None]
        obj_img = color[None, None, :] * gain + shade[..., None]
        obj_img = obj_img + rng.normal(0, 3.0, size=(h_img, w_img, 3))
        img[vis] = obj_img[vis]
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    return dict(image=img, **_labels(inst, objects))


# ----------------------------------------------------------------- writing
def _annotation_xml(year: str, filename: str, width: int, height: int,
                    segmented: bool, objects: List[dict]) -> str:
    ann = ET.Element('annotation')
    ET.SubElement(ann, 'folder').text = f'VOC{year}'
    ET.SubElement(ann, 'filename').text = filename
    src = ET.SubElement(ann, 'source')
    ET.SubElement(src, 'database').text = f'The VOC{year} Database'
    ET.SubElement(src, 'annotation').text = f'PASCAL VOC{year}'
    ET.SubElement(src, 'image').text = 'mmlckd synthetic'
    size = ET.SubElement(ann, 'size')
    ET.SubElement(size, 'width').text = str(width)
    ET.SubElement(size, 'height').text = str(height)
    ET.SubElement(size, 'depth').text = '3'
    ET.SubElement(ann, 'segmented').text = '1' if segmented else '0'
    for obj in objects:
        o = ET.SubElement(ann, 'object')
        ET.SubElement(o, 'name').text = obj['name']
        ET.SubElement(o, 'pose').text = 'Unspecified'
        ET.SubElement(o, 'truncated').text = '0'
        ET.SubElement(o, 'difficult').text = str(obj['difficult'])
        box = ET.SubElement(o, 'bndbox')
        for key, val in zip(('xmin', 'ymin', 'xmax', 'ymax'), obj['bbox']):
            ET.SubElement(box, key).text = str(val)
    ET.indent(ann, space='\t')
    return ET.tostring(ann, encoding='unicode') + '\n'


def parse_voc_xml(path: str) -> dict:
    """Read a VOC annotation: ``dict(filename, width, height, segmented,
    objects=[dict(name, difficult, truncated, bbox=(xmin, ymin, xmax,
    ymax))])`` with the file's (1-based) coordinates."""
    root = ET.parse(path).getroot()
    size = root.find('size')
    objects = []
    for obj in root.findall('object'):
        box = obj.find('bndbox')
        objects.append(
            dict(
                name=obj.find('name').text,
                difficult=int(obj.find('difficult').text),
                truncated=int(obj.find('truncated').text),
                bbox=tuple(
                    int(box.find(k).text)
                    for k in ('xmin', 'ymin', 'xmax', 'ymax'))))
    return dict(
        filename=root.find('filename').text,
        width=int(size.find('width').text),
        height=int(size.find('height').text),
        segmented=int(root.find('segmented').text),
        objects=objects)


def _write_list(path: str, ids: Iterable[str]) -> None:
    with open(path, 'w', encoding='utf-8', newline='\n') as f:
        f.write(''.join(f'{i}\n' for i in ids))


def _write_class_lists(main_dir: str, splits: Dict[str, List[str]],
                       objects: Dict[str, List[dict]]) -> None:
    """VOC's per-class lists: ``<id> <flag>`` with flag 1 (a non-difficult
    instance), 0 (only difficult instances) or -1 (absent)."""
    for cls in VOC_CLASSES:
        for split, ids in splits.items():
            lines = []
            for i in ids:
                flags = [o['difficult'] for o in objects[i] if o['name'] == cls]
                flag = -1 if not flags else (0 if all(flags) else 1)
                lines.append(f'{i} {flag:2d}\n')
            with open(
                    osp.join(main_dir, f'{cls}_{split}.txt'),
                    'w',
                    encoding='utf-8',
                    newline='\n') as f:
                f.write(''.join(lines))


def _save_png_p(path: str, seg: np.ndarray) -> None:
    h, w = seg.shape
    im = Image.frombytes('P', (w, h), np.ascontiguousarray(seg).tobytes())
    im.putpalette(_PALETTE_LIST)
    im.save(path, format='PNG')


def _save_png_l(path: str, seg: np.ndarray) -> None:
    h, w = seg.shape
    Image.frombytes('L', (w, h),
                    np.ascontiguousarray(seg).tobytes()).save(
                        path, format='PNG')


# ------------------------------------------------------------- arguments
def _norm_img_size(img_size) -> List[List[int]]:
    """-> ``[[w_min, w_max], [h_min, h_max]]`` (inclusive)."""
    err = ValueError(
        'img_size must be an int (square), (W, H) ints (fixed size), '
        '((w_min, w_max), (h_min, h_max)) or dict(min=, max=) (both sides '
        f'uniform in [min, max]); got {img_size!r}')
    if isinstance(img_size, dict):
        if set(img_size) != {'min', 'max'}:
            raise err
        rng_ = [int(img_size['min']), int(img_size['max'])]
        out = [list(rng_), list(rng_)]
    elif isinstance(img_size, (int, np.integer)):
        out = [[int(img_size)] * 2, [int(img_size)] * 2]
    elif (isinstance(img_size, (tuple, list)) and len(img_size) == 2
          and all(isinstance(v, (int, np.integer)) for v in img_size)):
        out = [[int(img_size[0])] * 2, [int(img_size[1])] * 2]
    elif (isinstance(img_size, (tuple, list)) and len(img_size) == 2
          and all(
              isinstance(v, (tuple, list)) and len(v) == 2 for v in img_size)):
        out = [[int(v[0]), int(v[1])] for v in img_size]
    else:
        raise err
    for lo, hi in out:
        if lo > hi or lo < _MIN_IMG_SIDE:
            raise ValueError(f'invalid img_size {img_size!r}: need '
                             f'{_MIN_IMG_SIDE} <= min <= max')
    return out


def _read_manifest(path: str) -> Optional[dict]:
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get('generator') != 'mmlckd':
        return None
    return data


def _count_files(folder: str, suffix: str) -> int:
    try:
        return sum(1 for n in os.listdir(folder) if n.endswith(suffix))
    except OSError:
        return -1


def _intact(devkit: str, summary: dict) -> bool:
    """Cheap check that a generated tree is still complete."""
    for year in ('2007', '2012'):
        info = summary[f'VOC{year}']
        d = osp.join(devkit, f'VOC{year}')
        n = info['num_images']
        if _count_files(osp.join(d, 'JPEGImages'), '.jpg') != n:
            return False
        if _count_files(osp.join(d, 'Annotations'), '.xml') != n:
            return False
        for sub in ('SegmentationClass', 'SegmentationObject'):
            if _count_files(osp.join(d, sub),
                            '.png') != info['num_segmentation_class']:
                return False
        for rel in info['lists']:
            if not osp.isfile(osp.join(d, rel)):
                return False
    if _count_files(
            osp.join(devkit, 'VOC2012', 'SegmentationClassAug'),
            '.png') != summary['VOC2012']['num_segmentation_class_aug']:
        return False
    return True


def _public_summary(root: str, summary: dict, reused: bool) -> dict:
    out = json.loads(json.dumps(summary))  # deep copy
    devkit = osp.join(root, 'VOCdevkit')
    out.update(
        root=root,
        devkit=devkit,
        manifest=osp.join(root, MANIFEST_NAME),
        reused=reused,
        paths={
            'VOC2007': osp.join(devkit, 'VOC2007'),
            'VOC2012': osp.join(devkit, 'VOC2012')
        })
    return out


# ------------------------------------------------------------------- main
def _normalise_args(num_trainval_07, num_test_07, num_trainval_12,
                    num_val_12, img_size, seed, classes, max_objects,
                    num_aug_extra_12) -> dict:
    """Checked, normalised arguments of :func:`make_synthetic_voc` (what
    its manifest records)."""
    counts = dict(
        num_trainval_07=num_trainval_07,
        num_test_07=num_test_07,
        num_trainval_12=num_trainval_12,
        num_val_12=num_val_12,
        max_objects=max_objects,
        seed=seed)
    for key, val in counts.items():
        if not isinstance(val, (int, np.integer)) or isinstance(val, bool):
            raise TypeError(f'{key} must be an int, got {val!r}')
        if val < 0:
            raise ValueError(f'{key} must be >= 0, got {val}')
    if not 1 <= max_objects <= 254:  # SegmentationObject ids are uint8
        raise ValueError(f'max_objects must be in [1, 254], got {max_objects}')
    if num_val_12 > num_trainval_12:
        raise ValueError('num_val_12 is a subset of num_trainval_12; got '
                         f'{num_val_12} > {num_trainval_12}')
    size_range = _norm_img_size(img_size)
    class_names = _class_names(classes)
    num_train_12 = num_trainval_12 - num_val_12
    if num_aug_extra_12 is None:
        num_aug_extra_12 = (max(1, num_train_12 // 4)
                            if num_train_12 >= 2 else 0)
    if not 0 <= int(num_aug_extra_12) <= num_train_12:
        raise ValueError(f'num_aug_extra_12 must be in [0, {num_train_12}] '
                         f'(the 2012 train images), got {num_aug_extra_12}')
    return dict(
        num_trainval_07=int(num_trainval_07),
        num_test_07=int(num_test_07),
        num_trainval_12=int(num_trainval_12),
        num_val_12=int(num_val_12),
        num_aug_extra_12=int(num_aug_extra_12),
        img_size=size_range,
        seed=int(seed),
        classes=class_names,
        max_objects=int(max_objects))


def _class_names(classes: Optional[Sequence[str]]) -> List[str]:
    """The names to draw (default all 20), checked against VOC's."""
    if classes is None:
        return list(VOC_CLASSES)
    if isinstance(classes, str):
        classes = [classes]
    class_names = list(classes)
    unknown = [c for c in class_names if c not in VOC_CLASSES]
    if unknown or not class_names or len(set(class_names)) != len(
            class_names):
        raise ValueError(f'classes must be distinct names from '
                         f'{VOC_CLASSES}; got {list(classes)!r}')
    return class_names


def _reuse_or_clean(root: str, devkit: str, manifest_path: str, args: dict,
                    overwrite: bool) -> Optional[dict]:
    """The summary of a matching, intact dataset under ``root`` (else None,
    after removing a devkit of ours that must be regenerated). Raises
    :class:`DatasetExistsError` for a different or a foreign dataset."""
    manifest = _read_manifest(manifest_path) if osp.exists(
        manifest_path) else None
    if manifest is not None:
        same = (manifest.get('version') == GENERATOR_VERSION
                and manifest.get('args') == args)
        complete = manifest.get('status') == 'complete'
        if same and complete and not overwrite and _intact(
                devkit, manifest['summary']):
            return _public_summary(root, manifest['summary'], reused=True)
        if complete and not same and not overwrite:
            old = manifest.get('args', {})
            diff = sorted(k for k in set(old) | set(args)
                          if old.get(k) != args.get(k))
            if manifest.get('version') != GENERATOR_VERSION:
                diff.append('version')
            raise DatasetExistsError(
                f'{root} already holds a synthetic VOC dataset generated '
                f'with different arguments (differing: {", ".join(diff)}). '
                'Pass overwrite=True (CLI: --overwrite) to regenerate it, or '
                'use another root.')
        # Ours (incomplete, damaged, or overwrite requested): regenerate.
        if osp.isdir(devkit):
            shutil.rmtree(devkit)
    elif osp.lexists(devkit) or osp.exists(manifest_path):
        raise DatasetExistsError(
            f'{root} contains a VOCdevkit (or {MANIFEST_NAME}) that was not '
            'generated by mmlckd.testing.make_synthetic_voc; refusing to '
            'reuse or delete it (even with overwrite=True). Remove it '
            'yourself or choose another root.')
    return None


def make_synthetic_voc(root: str,
                       num_trainval_07: int = 64,
                       num_test_07: int = 32,
                       num_trainval_12: int = 64,
                       num_val_12: int = 16,
                       img_size: Union[int, Sequence, dict] = ((96, 128),
                                                               (96, 128)),
                       seed: int = 0,
                       classes: Optional[Sequence[str]] = None,
                       max_objects: int = 4,
                       num_aug_extra_12: Optional[int] = None,
                       overwrite: bool = False) -> dict:
    """Generate (or reuse) a synthetic VOCdevkit under ``root/VOCdevkit``.

    Args:
        root: output folder (created if needed): ``root/VOCdevkit`` and
            ``root/mmlckd_synthetic.json`` (a manifest), nothing else.
        num_trainval_07 / num_test_07: VOC2007 trainval / test (disjoint).
        num_trainval_12: VOC2012 trainval images; ``num_val_12`` of them are
            the val split (val is a subset of trainval, as in real VOC2012).
        img_size: ``int`` (square), ``(W, H)`` (fixed), ``((w_min, w_max),
            (h_min, h_max))`` or ``dict(min=, max=)`` (per-image random size,
            inclusive). Default: 96..128 px per side.
        seed: everything is a deterministic function of the arguments.
        classes: subset of :data:`VOC_CLASSES` to draw (default all 20).
            XML names and segmentation indices stay the official ones.
        max_objects: objects per image are uniform in ``1..max_objects``.
        num_aug_extra_12: 2012 train images that are "SBD-only" (listed in
            ``Segmentation/aug.txt``, no ``SegmentationClass`` PNG). Default
            ``num_train_12 // 4`` (at least 1 from 2 train images on).
        overwrite: regenerate even if ``root`` holds a matching dataset
            (a ``VOCdevkit`` not made here is never deleted).

    Returns a dict: ``root``, ``devkit``, ``manifest``, ``paths`` (the
    VOC2007 / VOC2012 folders), ``reused`` (an existing matching dataset
    was returned), ``args`` (normalised), ``classes``, ``VOC2007`` /
    ``VOC2012`` (split sizes, object / difficult counts, list files) and
    ``num_images``. Raises :class:`DatasetExistsError` when ``root`` holds
    a different synthetic dataset (and not ``overwrite``), or a
    ``VOCdevkit`` not generated here.
    """
    args = _normalise_args(
        num_trainval_07=num_trainval_07, num_test_07=num_test_07,
        num_trainval_12=num_trainval_12, num_val_12=num_val_12,
        img_size=img_size, seed=seed, classes=classes,
        max_objects=max_objects, num_aug_extra_12=num_aug_extra_12)
    root = osp.abspath(os.fspath(root))
    devkit = osp.join(root, 'VOCdevkit')
    manifest_path = osp.join(root, MANIFEST_NAME)

    reused = _reuse_or_clean(root, devkit, manifest_path, args, overwrite)
    if reused is not None:
        return reused
    os.makedirs(root, exist_ok=True)
    _write_manifest(manifest_path, args, None, status='incomplete')
    summary = _generate(devkit, args)
    summary['args'] = args
    _write_manifest(manifest_path, args, summary, status='complete')
    return _public_summary(root, summary, reused=False)


def _write_manifest(path: str, args: dict, summary: Optional[dict],
                    status: str) -> None:
    data = dict(
        generator='mmlckd',
        function='mmlckd.testing.make_synthetic_voc',
        version=GENERATOR_VERSION,
        status=status,
        args=args,
        summary=summary)
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8', newline='\n') as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write('\n')
    os.replace(tmp, path)


def _splits(args: dict) -> dict:
    """Per year: the image ids, the segmented ids and the split lists."""
    split_rng = np.random.default_rng([args['seed'], 7])

    # VOC2007: ids 000001.. shared (interleaved) by trainval and test.
    n07 = args['num_trainval_07'] + args['num_test_07']
    ids07 = [f'{i:06d}' for i in range(1, n07 + 1)]
    perm = split_rng.permutation(n07)
    test07 = sorted(ids07[i] for i in perm[:args['num_test_07']])
    trainval07 = sorted(ids07[i] for i in perm[args['num_test_07']:])
    perm = split_rng.permutation(len(trainval07))
    val07 = sorted(trainval07[i] for i in perm[:len(trainval07) // 2])
    train07 = sorted(set(trainval07) - set(val07))

    # VOC2012: ids 2012_000001..; val subset of trainval; SBD-only extras.
    n12 = args['num_trainval_12']
    ids12 = [f'2012_{i:06d}' for i in range(1, n12 + 1)]
    perm = split_rng.permutation(n12)
    val12 = sorted(ids12[i] for i in perm[:args['num_val_12']])
    train12 = sorted(ids12[i] for i in perm[args['num_val_12']:])
    perm = split_rng.permutation(len(train12))
    extra12 = sorted(train12[i] for i in perm[:args['num_aug_extra_12']])
    seg_train12 = sorted(set(train12) - set(extra12))
    aug12 = sorted(set(ids12) - set(seg_train12) - set(val12))  # == extras
    trainaug12 = sorted(set(seg_train12) | set(aug12))  # == all train

    splits07 = dict(trainval=trainval07, train=train07, val=val07,
                    test=test07)
    return {
        '2007': dict(ids=ids07, segmented=set(ids07), main=dict(splits07),
                     seg=dict(splits07)),
        '2012': dict(
            ids=ids12, segmented=set(seg_train12) | set(val12),
            main=dict(trainval=sorted(ids12), train=train12, val=val12),
            seg=dict(train=seg_train12, val=val12,
                     trainval=sorted(set(seg_train12) | set(val12)),
                     aug=aug12, trainaug=trainaug12)),
    }


def _write_image(dirs: dict, year: str, idx: int, img_id: str,
                 segmented: bool, args: dict) -> List[dict]:
    """Render and write one image and its labels; returns its objects."""
    (wlo, whi), (hlo, hhi) = args['img_size']
    rng = np.random.default_rng([args['seed'], int(year), idx])
    width = int(rng.integers(wlo, whi + 1))
    height = int(rng.integers(hlo, hhi + 1))
    out = _render_image(rng, width, height, args['classes'],
                        args['max_objects'])
    Image.fromarray(out['image']).save(
        osp.join(dirs['img'], f'{img_id}.jpg'),
        format='JPEG',
        quality=_JPEG_QUALITY,
        subsampling=0)
    with open(
            osp.join(dirs['ann'], f'{img_id}.xml'),
            'w',
            encoding='utf-8',
            newline='\n') as f:
        f.write(
            _annotation_xml(year, f'{img_id}.jpg', width, height, segmented,
                            out['objects']))
    if segmented:
        _save_png_p(osp.join(dirs['seg'], f'{img_id}.png'), out['seg'])
        _save_png_p(osp.join(dirs['obj'], f'{img_id}.png'), out['seg_obj'])
    if 'aug' in dirs:
        _save_png_l(osp.join(dirs['aug'], f'{img_id}.png'), out['seg_aug'])
    return out['objects']


def _generate(devkit: str, args: dict) -> dict:
    years = _splits(args)
    summary = dict(classes=args['classes'],
                   num_images=sum(len(y['ids']) for y in years.values()))
    for year, spec in years.items():
        summary[f'VOC{year}'] = _write_year(devkit, year, spec, args)
    return summary


def _write_year(devkit: str, year: str, spec: dict, args: dict) -> dict:
    """One ``VOC<year>`` folder: images, labels and lists; its summary."""
    ydir = osp.join(devkit, f'VOC{year}')
    dirs = dict(
        img=osp.join(ydir, 'JPEGImages'),
        ann=osp.join(ydir, 'Annotations'),
        main=osp.join(ydir, 'ImageSets', 'Main'),
        segl=osp.join(ydir, 'ImageSets', 'Segmentation'),
        seg=osp.join(ydir, 'SegmentationClass'),
        obj=osp.join(ydir, 'SegmentationObject'))
    if year == '2012':
        dirs['aug'] = osp.join(ydir, 'SegmentationClassAug')
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)

    all_objects = {}
    for idx, img_id in enumerate(spec['ids']):
        all_objects[img_id] = _write_image(
            dirs, year, idx, img_id, img_id in spec['segmented'], args)

    lists = []
    for split, ids in spec['main'].items():
        _write_list(osp.join(dirs['main'], f'{split}.txt'), ids)
        lists.append(f'ImageSets/Main/{split}.txt')
    _write_class_lists(dirs['main'], spec['main'], all_objects)
    for split, ids in spec['seg'].items():
        _write_list(osp.join(dirs['segl'], f'{split}.txt'), ids)
        lists.append(f'ImageSets/Segmentation/{split}.txt')

    objs = [o for v in all_objects.values() for o in v]
    info = dict(
        num_images=len(spec['ids']),
        main={k: len(v)
              for k, v in spec['main'].items()},
        segmentation={k: len(v)
                      for k, v in spec['seg'].items()},
        num_segmentation_class=len(spec['segmented']),
        num_objects=len(objs),
        num_difficult=sum(o['difficult'] for o in objs),
        lists=lists)
    if year == '2012':
        info['num_segmentation_class_aug'] = len(spec['ids'])
    return info
