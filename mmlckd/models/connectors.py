"""Connectors that map student features into the teacher's feature space."""
import math

import torch.nn as nn
from torch import Tensor

from mmlckd.registry import MODELS

__all__ = ['OFDConnector']


@MODELS.register_module()
class OFDConnector(nn.Module):
    """OFD connector: 1x1 conv (no bias) + BatchNorm.

    Heo et al., "A Comprehensive Overhaul of Feature Distillation", ICCV 2019.
    The conv weights are drawn from ``N(0, 2 / (k * k * C_out))`` (k = 1) and
    the BN starts as the identity (weight 1, bias 0), as in the reference.

    Args:
        in_channels (int): Student channels.
        out_channels (int): Teacher channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.init_weights()

    def init_weights(self) -> None:
        """(Re-)initialise the parameters as in the OFD reference code."""
        k = self.conv.kernel_size[0] * self.conv.kernel_size[1]
        nn.init.normal_(self.conv.weight, 0.0,
                        math.sqrt(2.0 / (k * self.out_channels)))
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, C_s, H, W) to (B, C_t, H, W)."""
        return self.bn(self.conv(x))
