from .kd_loss import KDLoss
from .lipschitz_loss import LipschitzLoss
from .ofd_loss import OFDLoss, ofd_margin
from .power_iteration import (PowerIterationState, top_singular_value,
                              transmitting_matrix)

__all__ = [
    'transmitting_matrix', 'top_singular_value', 'PowerIterationState',
    'LipschitzLoss', 'ofd_margin', 'OFDLoss', 'KDLoss'
]
