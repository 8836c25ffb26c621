"""End-to-end demo of LONDON distillation on a synthetic PASCAL VOC.

Run from the repository root::

    python -m demo            # make demo: the headline regime
    python -m demo --study    # every regime, data seeds 0 and 2
    python -m demo --quick    # smoke run, about a minute

Generates the data, trains the teachers, then the students with and without
distillation (paired by seed), tests every model with mmdet's VOCMetric or
mmseg's IoUMetric and writes ``results.md``, ``results.json`` and one
training plot per regime to the work dir. Options: :func:`parse_args`.

An application of the public mmlckd API, not part of the installed package.
"""
from .pipeline import HEADLINE, STUDY, parse_args, run

__all__ = ['parse_args', 'run', 'HEADLINE', 'STUDY']
