from .kd import KDLoss
from .lipschitz import LipschitzLoss, spectral_norm, transmitting_matrix
from .ofd import OFDLoss, ofd_margin

__all__ = [
    'transmitting_matrix', 'spectral_norm', 'LipschitzLoss', 'ofd_margin',
    'OFDLoss', 'KDLoss'
]
