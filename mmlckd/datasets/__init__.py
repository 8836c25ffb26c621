"""Data for distillation: images without labels beside the labelled
training set (:mod:`.unlabelled`)."""
from .unlabelled import (LoadEmptySegMap, UnlabelledImageDataset,
                         WithUnlabelledImages, add_unlabelled_images,
                         unlabelled_pipeline)

__all__ = ['UnlabelledImageDataset', 'WithUnlabelledImages',
           'LoadEmptySegMap', 'add_unlabelled_images', 'unlabelled_pipeline']
