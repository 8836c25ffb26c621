from .kd_loss import KDLoss
from .lipschitz_loss import LipschitzLoss
from .ofd_loss import OFDLoss, ofd_margin
from .pkd_loss import PKDLoss, channel_standardise
from .power_iteration import transmitting_matrix
from .warm_start import PowerIterationState
from .prediction_kd_loss import PredictionKDLoss, split_classes

__all__ = [
    'transmitting_matrix', 'PowerIterationState',
    'LipschitzLoss', 'ofd_margin', 'OFDLoss', 'KDLoss', 'PKDLoss',
    'channel_standardise', 'PredictionKDLoss', 'split_classes'
]
