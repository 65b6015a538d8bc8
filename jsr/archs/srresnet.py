"""The SRResNet family: SRGAN-PyTorch's released layout ('srresnet', images in [-1, 1]) and the SRGAN paper's layout
as leftthomas/SRGAN wrote it ('srgan_paper', images in [0, 1]); one Flax module, ``jsr.models.Generator``."""

from __future__ import annotations

import math
import re
from typing import Any

from jsr.archs import Architecture, StateDict, register
from jsr.archs.mapping import Target, batch_norm, conv, from_targets, scalar_prelu
from jsr.models.srresnet import Generator, upsample_factors


def _indices(state: StateDict, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})


# ------------------------------------------------------------------------------------- SRGAN-PyTorch


def detect_srgan_pytorch(state: StateDict) -> dict[str, Any] | None:
    first, tails = state.get("conv01.body.0.weight"), _indices(state, r"tail\.(\d+)\.body\.0\.body\.0\.weight$")
    if first is None or first.ndim != 4 or not tails or "last_conv.body.0.weight" not in state:
        return None
    n_feats, channels = int(first.shape[0]), int(first.shape[1])
    outs = [int(state[f"tail.{j}.body.0.body.0.weight"].shape[0]) for j in tails]
    if len(tails) == 2 and outs == [4 * n_feats, 4 * n_feats]:
        scale = 4
    elif len(tails) == 1 and outs[0] % n_feats == 0 and math.isqrt(outs[0] // n_feats) ** 2 == outs[0] // n_feats:
        scale = math.isqrt(outs[0] // n_feats)
        if scale == 4 or scale < 2:
            return None
    else:
        return None
    blocks = _indices(state, r"body\.(\d+)\.")
    return {"n_feats": n_feats, "num_blocks": max(blocks) + 1 if blocks else 0, "scale": scale, "channels": channels}


def srgan_pytorch_targets(n_feats: int, num_blocks: int, scale: int, channels: int = 3, **_) -> dict[str, Target]:
    f = n_feats
    t = conv("conv01.body.0", ("conv01", "conv"), channels, f, 9)
    # The source shares ONE PReLU (a default-argument bug), so its scalar appears under every key; each key still
    # maps to its own layer here, which loads shared and per-layer checkpoints alike.
    t |= scalar_prelu("conv01.body.1.weight", ("conv01_prelu",))
    for i in range(num_blocks):
        p = f"body.{i}.body"
        t |= conv(f"{p}.0.body.0", (f"body_{i}", "conv1", "conv"), f, f, 3)
        t |= batch_norm(f"{p}.0.body.1", (f"body_{i}", "bn1"), f)
        t |= scalar_prelu(f"{p}.0.body.2.weight", (f"body_{i}", "prelu"))
        t |= conv(f"{p}.1.body.0", (f"body_{i}", "conv2", "conv"), f, f, 3)
        t |= batch_norm(f"{p}.1.body.1", (f"body_{i}", "bn2"), f)
    t |= conv("conv02.body.0", ("conv02", "conv"), f, f, 3)
    t |= batch_norm("conv02.body.1", ("conv02_bn",), f)
    for j, r in enumerate(upsample_factors(scale)):
        t |= conv(f"tail.{j}.body.0.body.0", (f"tail_{j}", "conv"), f, f * r * r, 3)
        t |= scalar_prelu(f"tail.{j}.body.2.weight", (f"tail_{j}_prelu",))
    t |= conv("last_conv.body.0", ("last_conv", "conv"), f, channels, 3)
    return t


SRGAN_PYTORCH = register(
    Architecture(
        name="srresnet",
        module=Generator,
        role="generator",
        detect=detect_srgan_pytorch,
        to_flax=from_targets(srgan_pytorch_targets),
        signature_keys=("conv01.body.0.weight", "body.0.body.0.body.0.weight", "last_conv.body.0.weight"),
        value_range=(-1.0, 1.0),
    )
)


# ------------------------------------------------------------------------------- the paper (leftthomas)

PAPER_LAYOUT = {"post_body": "prelu", "tail_kernel": 9, "output_01": True, "pow2_stages": True}


def detect_srgan_paper(state: StateDict) -> dict[str, Any] | None:
    first, stages = state.get("block1.0.weight"), _indices(state, r"block8\.(\d+)\.conv\.weight$")
    if first is None or first.ndim != 4 or not stages or "block7.0.weight" not in state:
        return None
    blocks = _indices(state, r"block(\d+)\.conv1\.weight$")
    if blocks != list(range(2, 2 + len(blocks))) or f"block8.{len(stages)}.weight" not in state:
        return None
    n_feats, channels = int(first.shape[0]), int(first.shape[1])
    if any(tuple(state[f"block8.{j}.conv.weight"].shape[:2]) != (4 * n_feats, n_feats) for j in stages):
        return None
    return {"n_feats": n_feats, "num_blocks": len(blocks), "scale": 2 ** len(stages), "channels": channels}


def srgan_paper_targets(n_feats: int, num_blocks: int, scale: int, channels: int = 3, **_) -> dict[str, Target]:
    f = n_feats
    t = conv("block1.0", ("conv01", "conv"), channels, f, 9)
    t |= scalar_prelu("block1.1.weight", ("conv01_prelu",))
    for i in range(num_blocks):
        p = f"block{i + 2}"
        t |= conv(f"{p}.conv1", (f"body_{i}", "conv1", "conv"), f, f, 3)
        t |= batch_norm(f"{p}.bn1", (f"body_{i}", "bn1"), f)
        t |= scalar_prelu(f"{p}.prelu.weight", (f"body_{i}", "prelu"))
        t |= conv(f"{p}.conv2", (f"body_{i}", "conv2", "conv"), f, f, 3)
        t |= batch_norm(f"{p}.bn2", (f"body_{i}", "bn2"), f)
    t |= conv("block7.0", ("conv02", "conv"), f, f, 3)
    t |= scalar_prelu("block7.1.weight", ("conv02_prelu",))
    stages = upsample_factors(scale, pow2_stages=True)
    for j in range(len(stages)):
        t |= conv(f"block8.{j}.conv", (f"tail_{j}", "conv"), f, 4 * f, 3)
        t |= scalar_prelu(f"block8.{j}.prelu.weight", (f"tail_{j}_prelu",))
    t |= conv(f"block8.{len(stages)}", ("last_conv", "conv"), f, channels, 9)
    return t


SRGAN_PAPER = register(
    Architecture(
        name="srgan_paper",
        module=Generator,
        role="generator",
        detect=lambda state: None if (c := detect_srgan_paper(state)) is None else c | PAPER_LAYOUT,
        to_flax=from_targets(srgan_paper_targets),
        signature_keys=("block1.0.weight", "block2.conv1.weight", "block7.0.weight", "block8.0.conv.weight"),
        value_range=(0.0, 1.0),
    )
)
