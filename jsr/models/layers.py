"""Flax layers whose gradients sum in float32 in any compute dtype: ``nn.Conv`` and ``nn.PReLU`` with the same
parameters (names, shapes, initialisers) and the same float32 forward.

Flax adds a conv's bias and multiplies a PReLU's slope in the compute dtype, so in bfloat16 their parameters'
gradients are bfloat16 sums over whole feature maps, which stall once the running sum dwarfs each term (PyTorch
accumulates them in float32). Every jsr model builds its convs and PReLUs from here.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from jsr.ops.prelu import prelu
from jsr.ops.sums import bias_add, bias_add_float32


class Conv(nn.Conv):
    """``nn.Conv`` for NHWC inputs with explicit padding, any stride, no dilation and one group (what jsr's models
    use; anything else is refused). Still an ``nn.Conv`` to Flax and Delta-STN.

    The bias is added in float32 (``jsr.ops.sums``). Given a jsr conv function (the reverse-mode-only paths: all but
    'xla'), its gradient is ``bias_add``'s staged sum: XLA:CPU's own reduction was the bfloat16 SRResNet step's
    slowest non-conv op. Without one, XLA differentiates the add itself, forward mode (``jax.jvp``) included."""

    def _unsupported(self) -> list[str]:
        unit = (None, 1, (1, 1))
        fields = {"input_dilation": self.input_dilation, "kernel_dilation": self.kernel_dilation}
        bad = [f"{name}={value!r}" for name, value in fields.items() if value not in unit]
        bad += [f"feature_group_count={self.feature_group_count}"] if self.feature_group_count != 1 else []
        bad += [f"padding={self.padding!r}"] if isinstance(self.padding, (str, int)) else []
        return bad

    @nn.compact
    def __call__(self, inputs):
        if bad := self._unsupported():
            raise ValueError(f"jsr's Conv takes no dilation, one group and explicit padding; got {', '.join(bad)}")
        shape = (*self.kernel_size, inputs.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        dtype = self.dtype or jnp.promote_types(inputs.dtype, self.param_dtype)
        strides = self.strides or 1
        strides = (strides,) * len(self.kernel_size) if isinstance(strides, int) else tuple(strides)
        y = (self.conv_general_dilated or lax.conv_general_dilated)(
            inputs.astype(dtype),
            kernel.astype(dtype),
            strides,
            self.padding,
            lhs_dilation=(1, 1),
            rhs_dilation=(1, 1),
            dimension_numbers=lax.conv_dimension_numbers(inputs.shape, shape, ("NHWC", "HWIO", "NHWC")),
            precision=self.precision,
        )
        if bias is None:
            return y
        return bias_add_float32(y, bias) if self.conv_general_dilated is None else bias_add(y, bias)


class PReLU(nn.PReLU):
    """``nn.PReLU`` (one slope) whose slope product is float32 (``jsr.ops.prelu``)."""

    @nn.compact
    def __call__(self, inputs):
        slope = self.param("negative_slope", lambda k: jnp.asarray(self.negative_slope_init, self.param_dtype))
        return prelu(inputs, slope)


class ChannelPReLU(nn.Module):
    """PyTorch's ``nn.PReLU(num_parameters=C)``: one slope per channel (Flax's nn.PReLU has a single one)."""

    slope_init: float = 0.25  # PyTorch's nn.PReLU default

    @nn.compact
    def __call__(self, x):
        slope = self.param("negative_slope", nn.initializers.constant(self.slope_init), (x.shape[-1],), jnp.float32)
        return prelu(x, slope)
