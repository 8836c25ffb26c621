"""End-to-end demo of LONDON distillation on a synthetic PASCAL VOC.

``python tools/demo.py [--study] [--quick] ...``; see
:func:`mmlckd.demo.pipeline.parse_args`. Heavy imports (torch, mmdet,
mmseg) happen inside :func:`run`, not at import time.
"""
from .pipeline import HEADLINE, STUDY, parse_args, run

__all__ = ['parse_args', 'run', 'HEADLINE', 'STUDY']
