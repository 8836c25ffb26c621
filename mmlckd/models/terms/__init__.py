"""Distillation terms: registered modules that say what they read and
return their loss (see :mod:`.base`). The distiller's ``terms=`` argument
takes them by name."""
from .base import DistillTerm, Read
from .head_lipschitz_term import HeadLipschitzTerm
from .neck_pkd_term import NeckPKDTerm
from .pair_terms import LipschitzTerm, OFDTerm, ResponseKDTerm
from .prediction_kd_term import PredictionKDTerm

__all__ = ['DistillTerm', 'Read', 'NeckPKDTerm', 'PredictionKDTerm',
           'HeadLipschitzTerm', 'OFDTerm', 'LipschitzTerm',
           'ResponseKDTerm']
