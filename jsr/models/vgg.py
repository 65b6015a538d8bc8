"""VGG19 feature extractor in torchvision's layout, for perceptual losses and metrics.

Takes images in [-1, 1] (the generator's range), maps them to [0, 1] and applies the ImageNet
normalisation itself. Taps ``reluB_I`` are AFTER the ReLU, as SRGAN defines VGG22 / VGG54; taps ``convB_I`` are
the same layer BEFORE its ReLU, as ESRGAN's perceptual loss takes them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jsr.ops.conv import FAST_PATHS, conv_function, input_grad_kernel
from jsr.ops.pool import max_pool_2x2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision cfg "E": convs per block, channels per block; a 2x2 max pool follows every block.
VGG19_BLOCKS = ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512))
VGG19_TAPS = tuple(f"relu{b + 1}_{i + 1}" for b, (n, _) in enumerate(VGG19_BLOCKS) for i in range(n))
PRE_ACTIVATION_TAPS = tuple(tap.replace("relu", "conv") for tap in VGG19_TAPS)
# Variable collection of the kernels' input-gradient forms (``with_input_grad_kernels``); read only on FAST_PATHS.
INPUT_GRAD_KERNELS = "input_grad_kernels"


def torchvision_index(tap: str) -> int:
    """Index in torchvision's ``features`` Sequential of the conv feeding ``tap`` (relu index = this + 1)."""
    index = 0
    for b, (n, _) in enumerate(VGG19_BLOCKS):
        for i in range(n):
            if tap == f"relu{b + 1}_{i + 1}":
                return index
            index += 2  # conv, relu
        index += 1  # max pool
    raise KeyError(tap)


def with_input_grad_kernels(variables: Mapping[str, Any], dtype: Any = jnp.float32) -> dict[str, Any]:
    """``variables`` plus each conv kernel's input-gradient form (``jsr.ops.conv.input_grad_kernel``), built once,
    in the module's compute ``dtype`` (so that no step casts them again).

    For a FROZEN VGG19 (the perceptual loss) with conv='fast' or 'winograd': its backward pass then reads these
    instead of transposing every kernel in every step (80 MB more memory for the full network in float32), and on a
    CPU its 3x3 convs on maps of 12+ pixels run forward and backward by Winograd F(4x4, 3x3) (``jsr.ops.winograd``;
    values and input gradient equal to ~1e-5, except where a max pool's near-tie routes the gradient otherwise).
    Rebuild them if ``variables["params"]`` ever change: a stale copy gives a wrong input gradient."""
    params = variables["params"]
    flipped = jax.jit(lambda p: {n: input_grad_kernel(layer["kernel"]).astype(dtype) for n, layer in p.items()})(params)
    return {**variables, INPUT_GRAD_KERNELS: flipped}


class VGG19Features(nn.Module):
    """``__call__(x, taps=("relu2_2", "relu5_4"))`` -> {tap: NHWC features}; stops after the deepest tap."""

    dtype: Any = jnp.float32
    # 'fast' / 'winograd': convs by jsr.ops.conv.fast_conv (also im2col on tiny feature maps, XLA CPU's slow case; with
    # ``with_input_grad_kernels`` variables, their input-gradient forms), pools by jsr.ops.pool.max_pool_2x2 (an
    # elementwise gradient instead of XLA CPU's scalar select_and_scatter)
    conv: str = "xla"

    @nn.compact
    def __call__(self, x, taps: Sequence[str] = ("relu2_2", "relu5_4")) -> dict[str, jnp.ndarray]:
        unknown = [t for t in taps if t not in VGG19_TAPS and t not in PRE_ACTIVATION_TAPS]
        if unknown:
            raise ValueError(f"unknown VGG19 taps {unknown}; choose from {list(VGG19_TAPS + PRE_ACTIVATION_TAPS)}")
        last = max(VGG19_TAPS.index(t.replace("conv", "relu")) for t in taps)
        x = (x.astype(jnp.float32) + 1.0) / 2.0
        x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
        x = x.astype(self.dtype)
        out = {}
        k = 0
        for b, (n, features) in enumerate(VGG19_BLOCKS):
            if b > 0:
                if self.conv in FAST_PATHS:
                    x = max_pool_2x2(x)
                else:
                    x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            for i in range(n):
                name = f"conv{b + 1}_{i + 1}"
                conv = conv_function(self.conv)
                if self.conv in FAST_PATHS and self.has_variable(INPUT_GRAD_KERNELS, name):
                    conv = functools.partial(conv, input_grad_kernel=self.get_variable(INPUT_GRAD_KERNELS, name))
                x = nn.Conv(
                    features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, conv_general_dilated=conv, name=name
                )(x)
                if name in taps:
                    out[name] = x.astype(jnp.float32)
                x = nn.relu(x)
                tap = f"relu{b + 1}_{i + 1}"
                if tap in taps:
                    out[tap] = x.astype(jnp.float32)
                if k == last:
                    return out
                k += 1
        return out
