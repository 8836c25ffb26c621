"""What a data sample carries for distillation: the mark of an image
without labels (set by :class:`mmlckd.datasets.UnlabelledImageDataset`),
and the label map a label-aware term reads from it. Imports torch only, so
the datasets, the terms and the distiller all build on it."""
import torch

__all__ = ['UNLABELLED', 'is_unlabelled', 'label_map']

#: the metainfo key of a data sample without labels
UNLABELLED = 'unlabelled'


def is_unlabelled(sample) -> bool:
    """Whether a data sample is marked as having no labels."""
    meta = getattr(sample, 'metainfo', None)
    return bool(meta.get(UNLABELLED, False)) if meta else False


def label_map(sample, ignore_index: int = 255) -> torch.Tensor:
    """The (H, W) segmentation label map of a sample for the label-aware
    distillation terms (which leave out ``ignore_index`` pixels): its
    ground truth, or for an unlabelled sample 0 (a valid pixel) inside the
    image and ``ignore_index`` in the batch padding."""
    label = sample.gt_sem_seg.data.squeeze(0)
    if not is_unlabelled(sample):
        return label
    h, w = sample.metainfo.get('img_shape', label.shape[-2:])[:2]
    out = torch.full_like(label, ignore_index)
    out[..., :h, :w] = 0
    return out
