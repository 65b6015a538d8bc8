"""SRGAN discriminator in the layout of SRGAN-PyTorch (NHWC, images in [-1, 1]); returns LOGITS.

The source ends in a sigmoid and its training applied BCE-with-logits on top (a double sigmoid). Here the
module returns logits; use ``jax.nn.sigmoid`` for probabilities and the stable logits form for losses.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jsr.models.layers import Conv
from jsr.models.srresnet import BN_EPSILON, BN_MOMENTUM, CONV_INIT
from jsr.ops.conv import conv_function

# The source builds nn.LeakyReLU() with PyTorch's default slope (the paper says 0.2).
LEAKY_SLOPE = 0.01
NUM_DOWN_BLOCKS = 3


def head_size(patch_size: int) -> int:
    """Spatial size of the last feature map (the source computes patch // 16; stride-2 convs give ceil)."""
    return patch_size // (2 ** (NUM_DOWN_BLOCKS + 1))


class Discriminator(nn.Module):
    """conv01, conv02 (stride 2, no BN), 3 x [conv+BN, stride-2 conv+BN], Linear 1024, Linear 1.

    Attributes:
      patch_size: square input size the dense head is built for (96 in the source; 256 for whole Pokemon).
      n_feats: channels of the first conv (doubled by each body block).
      dtype: compute dtype.
      conv: convolution path, one of ``jsr.ops.conv.CONV_PATHS`` (see ``jsr.models.Generator``).
    """

    patch_size: int = 96
    n_feats: int = 64
    dtype: Any = jnp.float32
    conv: str = "xla"

    @nn.compact
    def __call__(self, x, train: bool = False):
        if x.ndim != 4 or x.shape[1:3] != (self.patch_size, self.patch_size):
            raise ValueError(
                f"Discriminator(patch_size={self.patch_size}) expects NHWC input of "
                f"{self.patch_size}x{self.patch_size}, got shape {x.shape}"
            )
        act = lambda y: nn.leaky_relu(y, LEAKY_SLOPE)  # noqa: E731

        def conv(y, features, stride, name):
            # Explicit symmetric padding: Flax 'SAME' with stride 2 pads (0, 1), PyTorch pads (1, 1).
            return Conv(
                features,
                (3, 3),
                strides=(stride, stride),
                padding=((1, 1), (1, 1)),
                kernel_init=CONV_INIT,
                dtype=self.dtype,
                conv_general_dilated=conv_function(self.conv),
                name=name,
            )(y)

        def bn(y, name):
            return nn.BatchNorm(
                use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=self.dtype, name=name
            )(y)

        x = x.astype(self.dtype)
        x = act(conv(x, self.n_feats, 1, "conv01"))
        x = act(conv(x, self.n_feats, 2, "conv02"))
        for i in range(NUM_DOWN_BLOCKS):
            features = self.n_feats * 2 ** (i + 1)
            x = act(bn(conv(x, features, 1, f"body_{i}_conv1"), f"body_{i}_bn1"))
            x = act(bn(conv(x, features, 2, f"body_{i}_conv2"), f"body_{i}_bn2"))
        # H, W, C flatten order; the converter permutes the source's C, H, W-ordered weights to match.
        x = x.reshape(x.shape[0], -1)
        x = act(nn.Dense(1024, dtype=self.dtype, name="tail_0")(x))
        x = nn.Dense(1, dtype=self.dtype, name="tail_2")(x)
        return x.astype(jnp.float32)
