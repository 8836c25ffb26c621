"""Data for distillation: images without labels beside the labelled
training set (:mod:`.unlabelled`)."""
from .images import UnlabelledImageDataset
from .pipeline import LoadEmptySegMap, unlabelled_pipeline
from .unlabelled import WithUnlabelledImages, add_unlabelled_images

__all__ = ['UnlabelledImageDataset', 'WithUnlabelledImages',
           'LoadEmptySegMap', 'add_unlabelled_images', 'unlabelled_pipeline']
