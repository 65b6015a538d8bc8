"""Real-ESRGAN's U-Net discriminator with spectral normalisation (``UNetDiscriminatorSN`` of
``realesrgan/archs/discriminator_arch.py``): NHWC images in [0, 1] -> per-pixel logits (N, H, W, 1).

Train mode needs the 'batch_stats' collection mutable (it holds the spectral norms' ``u`` and ``v``)::

    logits, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])

Eval mode (``train=False``) uses the stored ``u`` and ``v`` as PyTorch's eval does. H and W must be multiples of 8
(three stride-2 convs, then x2 upsamplings added to the skips).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jsr.archs import Architecture, StateDict, register
from jsr.archs.mapping import Target, conv, from_targets, oihw_to_hwio
from jsr.models.layers import Conv
from jsr.ops.conv import conv_function
from jsr.ops.resize import masked_upscale
from jsr.ops.spectral_norm import TORCH_CONV_INIT, SpectralConv, torch_v_to_hwi

LEAKY_SLOPE = 0.2
DOWN = ((1, 2), (2, 4), (4, 8))  # conv1..conv3: (in, out) channel multiples of num_feat, 4x4 stride 2
UP = ((8, 4), (4, 2), (2, 1))  # conv4..conv6: 3x3 after each x2 upsampling
EXTRA = ((1, 1), (1, 1))  # conv7, conv8


def spectral_layers(num_feat: int) -> dict[str, tuple[int, int, int, int]]:
    """name -> (in, out, kernel, stride) of every spectral-normed conv."""
    layers = {f"conv{i + 1}": (a * num_feat, b * num_feat, 4, 2) for i, (a, b) in enumerate(DOWN)}
    layers |= {f"conv{i + 4}": (a * num_feat, b * num_feat, 3, 1) for i, (a, b) in enumerate(UP)}
    layers |= {f"conv{i + 7}": (a * num_feat, b * num_feat, 3, 1) for i, (a, b) in enumerate(EXTRA)}
    return layers


class UNetDiscriminatorSN(nn.Module):
    """conv0, 3 spectral-normed stride-2 convs, 3 x (bilinear x2, SN conv, + skip), 2 SN convs, conv9 -> 1 channel.

    Attributes:
      num_in_ch: input channels.
      num_feat: channels of conv0 (doubled by each downsampling).
      skip_connection: add the encoder's features after each upsampling conv.
      dtype: compute dtype (spectral norms are computed in float32).
      conv: convolution path, one of ``jsr.ops.conv.CONV_PATHS`` (see ``jsr.ops.conv.conv_function``).
    """

    num_in_ch: int = 3
    num_feat: int = 64
    skip_connection: bool = True
    dtype: Any = jnp.float32
    conv: str = "xla"

    def _plain(self, x, features: int, name: str):
        return Conv(
            features,
            (3, 3),
            padding=((1, 1), (1, 1)),
            kernel_init=TORCH_CONV_INIT,
            dtype=self.dtype,
            conv_general_dilated=conv_function(self.conv),
            name=name,
        )(x)

    def _sn(self, x, name: str, train: bool):
        _, cout, k, stride = spectral_layers(self.num_feat)[name]
        strides, pad = (stride, stride), ((1, 1), (1, 1))
        layer = SpectralConv(cout, (k, k), strides, pad, use_bias=False, dtype=self.dtype, conv=self.conv, name=name)
        return nn.leaky_relu(layer(x, update_stats=train), LEAKY_SLOPE)

    @nn.compact
    def __call__(self, x, train: bool = False):
        if x.ndim != 4 or x.shape[-1] != self.num_in_ch or x.shape[1] % 8 or x.shape[2] % 8:
            raise ValueError(
                f"UNetDiscriminatorSN expects NHWC input with {self.num_in_ch} channels and H, W multiples of 8, "
                f"got shape {x.shape}"
            )
        x0 = nn.leaky_relu(self._plain(x.astype(self.dtype), self.num_feat, "conv0"), LEAKY_SLOPE)
        x1 = self._sn(x0, "conv1", train)
        x2 = self._sn(x1, "conv2", train)
        y = self._sn(x2, "conv3", train)
        for name, skip in (("conv4", x2), ("conv5", x1), ("conv6", x0)):
            # jax.image.resize's bilinear x2 equals PyTorch's align_corners=False (clamped border taps)
            y = self._sn(masked_upscale(y, 2, "bilinear"), name, train)
            y = y + skip if self.skip_connection else y
        y = self._sn(self._sn(y, "conv7", train), "conv8", train)
        return self._plain(y, 1, "conv9").astype(jnp.float32)


# ------------------------------------------------------------------------------------------------ conversion


def detect(state: StateDict) -> dict[str, Any] | None:
    first, last, down = state.get("conv0.weight"), state.get("conv9.weight"), state.get("conv1.weight_orig")
    if first is None or last is None or down is None or first.ndim != 4 or last.ndim != 4 or down.ndim != 4:
        return None
    num_feat = int(first.shape[0])
    if tuple(last.shape) != (1, num_feat, 3, 3) or tuple(down.shape) != (2 * num_feat, num_feat, 4, 4):
        return None
    # skip_connection has no weights: Real-ESRGAN's configs all train with it on
    return {"num_in_ch": int(first.shape[1]), "num_feat": num_feat, "skip_connection": True}


def spectral_targets(name: str, cin: int, cout: int, k: int) -> dict[str, Target]:
    """torch.nn.utils.spectral_norm's saved tensors: weight_orig -> kernel, weight_u / weight_v -> u / v."""
    v_to_hwi = lambda a: torch_v_to_hwi(a, cin, (k, k))  # noqa: E731
    return {
        f"{name}.weight_orig": Target("params", (name, "kernel"), (cout, cin, k, k), oihw_to_hwio),
        f"{name}.weight_u": Target("batch_stats", (name, "u"), (cout,)),
        f"{name}.weight_v": Target("batch_stats", (name, "v"), (cin * k * k,), v_to_hwi),
    }


def targets(num_in_ch: int, num_feat: int, skip_connection: bool = True) -> dict[str, Target]:
    t = conv("conv0", ("conv0",), num_in_ch, num_feat, 3)
    for name, (cin, cout, k, _) in spectral_layers(num_feat).items():
        t |= spectral_targets(name, cin, cout, k)
    return t | conv("conv9", ("conv9",), num_feat, 1, 3)


ARCH = register(
    Architecture(
        name="unet_discriminator_sn",
        module=UNetDiscriminatorSN,
        role="discriminator",
        detect=detect,
        to_flax=from_targets(targets),
        signature_keys=("conv0.weight", "conv1.weight_orig", "conv1.weight_u", "conv9.weight"),
        value_range=(0.0, 1.0),
        exact_tiling=False,
        cpu_winograd=False,  # not measured with Winograd
    )
)
