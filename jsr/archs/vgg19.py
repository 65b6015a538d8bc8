"""torchvision's VGG19 ``features`` up to relu5_4 (the perceptual loss and metrics): ``jsr.models.VGG19Features``."""

from __future__ import annotations

from typing import Any

from jsr.archs import Architecture, StateDict, register
from jsr.archs.mapping import Target, conv, from_targets
from jsr.models.vgg import VGG19_BLOCKS, VGG19_TAPS, VGG19Features, torchvision_index


def targets() -> dict[str, Target]:
    t = {}
    cin = 3
    for tap in VGG19_TAPS:
        cout = VGG19_BLOCKS[int(tap[4]) - 1][1]
        t |= conv(f"features.{torchvision_index(tap)}", (tap.replace("relu", "conv"),), cin, cout, 3)
        cin = cout
    return t


def detect(state: StateDict) -> dict[str, Any] | None:
    # VGG19's 16 convs sit at these torchvision indices; VGG16 has 13 and ends at 28
    wanted = {f"features.{torchvision_index(tap)}.weight" for tap in VGG19_TAPS}
    return {} if wanted <= set(state) and "features.34.weight" in state else None


ARCH = register(
    Architecture(
        name="vgg19",
        module=VGG19Features,
        role="features",
        detect=detect,
        to_flax=from_targets(targets, ignored=lambda key: key.startswith("classifier.")),
        signature_keys=("features.0.weight", "features.34.weight"),
        value_range=(-1.0, 1.0),
        exact_tiling=False,
    )
)
