"""Custom operations: ``conv`` (a convolution with a selectable weight-gradient formulation)."""

from jsr.ops.conv import CONV_PATHS, conv_function, fast_conv

__all__ = ["CONV_PATHS", "conv_function", "fast_conv"]
