"""SRGAN-PyTorch's discriminator (images in [-1, 1]; returns logits): ``jsr.models.Discriminator``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jsr.archs import Architecture, StateDict, register
from jsr.archs.mapping import Target, batch_norm, conv, from_targets, linear
from jsr.models.discriminator import NUM_DOWN_BLOCKS, Discriminator, head_size


def detect(state: StateDict) -> dict[str, Any] | None:
    first, head = state.get("conv01.body.0.weight"), state.get("tail.0.weight")
    if first is None or head is None or first.ndim != 4 or head.ndim != 2 or int(first.shape[1]) != 3:
        return None
    n_feats, fin = int(first.shape[0]), int(head.shape[1])
    cells = fin // (8 * n_feats)
    side = math.isqrt(cells)
    if cells * 8 * n_feats != fin or side * side != cells:
        return None  # the head's input is not (patch/16)^2 * 8 n_feats for any patch size
    return {"patch_size": 16 * side, "n_feats": n_feats}


def targets(patch_size: int, n_feats: int, channels: int = 3) -> dict[str, Target]:
    f = n_feats
    t = conv("conv01.body.0", ("conv01",), channels, f, 3)
    t |= conv("conv02.body.0", ("conv02",), f, f, 3)
    cin = f
    for i in range(NUM_DOWN_BLOCKS):
        cout = f * 2 ** (i + 1)
        t |= conv(f"body.{i}.body.0.body.0", (f"body_{i}_conv1",), cin, cout, 3)
        t |= batch_norm(f"body.{i}.body.0.body.1", (f"body_{i}_bn1",), cout)
        t |= conv(f"body.{i}.body.1.body.0", (f"body_{i}_conv2",), cout, cout, 3)
        t |= batch_norm(f"body.{i}.body.1.body.1", (f"body_{i}_bn2",), cout)
        cin = cout
    s = head_size(patch_size)

    def chw_to_hwc(a: np.ndarray) -> np.ndarray:
        # torch flattens (C, H, W); the Flax module flattens NHWC as (H, W, C).
        return a.reshape(a.shape[0], cin, s, s).transpose(2, 3, 1, 0).reshape(s * s * cin, a.shape[0])

    t |= linear("tail.0", "tail_0", s * s * cin, 1024, chw_to_hwc)
    t |= linear("tail.2", "tail_2", 1024, 1)
    return t


ARCH = register(
    Architecture(
        name="srgan_discriminator",
        module=Discriminator,
        role="discriminator",
        detect=detect,
        to_flax=from_targets(targets),
        signature_keys=("conv01.body.0.weight", "body.0.body.0.body.0.weight", "tail.0.weight"),
        value_range=(-1.0, 1.0),
        exact_tiling=False,
        # its stride-1 3x3 convs by Winograd: GAN step 6% faster with host memory reuse (README, Performance)
        cpu_winograd=True,
    )
)
