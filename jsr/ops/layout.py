"""What an NHWC / HWIO convolution call is, and its padding as explicit (low, high) pairs: for the custom
convolution paths (``jsr.ops.conv``, which also dispatches to ``jsr.ops.winograd``)."""

from __future__ import annotations

import jax.numpy as jnp
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


def plain_conv(
    lhs, dimension_numbers, lhs_dilation, rhs_dilation, feature_group_count, batch_group_count, preferred_element_type
) -> bool:
    """Whether a ``lax.conv_general_dilated`` call is the plain kind jsr's own conv paths serve: NHWC / HWIO, no
    dilation, no grouping, the result in the inputs' dtype."""
    return (
        is_nhwc(dimension_numbers, jnp.ndim(lhs))
        and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
        and feature_group_count == batch_group_count == 1
        and preferred_element_type is None
    )


def explicit_padding(padding, lhs_shape, rhs_shape, strides) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[:2], strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)
