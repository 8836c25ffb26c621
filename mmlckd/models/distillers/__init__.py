from .balance import LossBalancer
from .feature_pairs import FeaturePair, lipschitz_maps
from .lipschitz_distiller import LipschitzDistiller

__all__ = ['LipschitzDistiller', 'FeaturePair', 'LossBalancer',
           'lipschitz_maps']
