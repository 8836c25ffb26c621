from .balance import LossBalancer
from .lipschitz_distiller import (FeaturePair, LipschitzDistiller,
                                  lipschitz_maps)

__all__ = ['LipschitzDistiller', 'FeaturePair', 'LossBalancer',
           'lipschitz_maps']
