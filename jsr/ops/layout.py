"""What an NHWC / HWIO convolution call is, and its padding as explicit (low, high) pairs: shared by the custom
convolution paths (``jsr.ops.conv``, ``jsr.ops.winograd``)."""

from __future__ import annotations

from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")


def is_nhwc(dimension_numbers, ndim: int) -> bool:
    if ndim != 4:
        return False
    if dimension_numbers is None:  # lax's default is NCHW / OIHW
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers == lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), NHWC)
    return tuple(dimension_numbers) == NHWC


def explicit_padding(padding, lhs_shape, rhs_shape, strides) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[:2], strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)
