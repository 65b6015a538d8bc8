"""Custom operations: ``conv`` (a convolution with selectable gradient formulations), ``winograd`` (3x3 convolutions
with fewer multiplications) and ``pool`` (a 2x2 max pool with an elementwise gradient)."""

from jsr.ops.conv import CONV_PATHS, conv_function, fast_conv
from jsr.ops.pool import max_pool_2x2
from jsr.ops.winograd import winograd_conv3x3

__all__ = ["CONV_PATHS", "conv_function", "fast_conv", "max_pool_2x2", "winograd_conv3x3"]
