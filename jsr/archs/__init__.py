"""Architectures as plug-ins: one module per network holds its Flax module, how to read its constructor arguments
off a PyTorch state_dict, how to map that state_dict's tensors, its value range and whether it tiles exactly.

An architecture module defines ``ARCH = Architecture(...)`` and calls ``register(ARCH)``; importing ``jsr.archs``
registers the built-in ones. A test (or a user's package) registers its own the same way, touching nothing else.

The Flax module of a generator is called as ``module.apply(variables, x, valid_mask=None)`` with NHWC images in
``value_range``; ``valid_mask`` (N, H, W, 1) marks the real pixels of a zero-padded canvas, and the output's valid
region must then equal running the network on the unpadded image (zero every conv's input outside the mask).
Generators expose ``scale`` and, when ``exact_tiling``, ``receptive_radius`` (LR pixels of context per side).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

StateDict = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One network family.

    name: registry key, also written to jsr_model.json.
    module: the Flax module class, constructed as ``module(**config)``.
    role: 'generator', 'discriminator' or 'features'.
    detect: ``state_dict -> config`` (constructor arguments read off keys and shapes), or None when the state_dict
      is not of this family. Must not raise on foreign state_dicts.
    to_flax: ``(state_dict, config) -> variables`` ({'params': ..., optional 'batch_stats': ...}, numpy arrays);
      raises ValueError naming the key on a mismatch.
    signature_keys: a few keys every state_dict of this family has (for "closest architecture" messages).
    value_range: the range of the images the module takes and returns, (0, 1) or (-1, 1).
    colour: 'rgb', or 'y' for networks that see only the luma channel (chroma is then carried by bicubic).
    exact_tiling: purely local (convolutions and pointwise ops): tiles with enough overlap stitch exactly.
    cpu_winograd: Winograd F(4x4, 3x3) beats XLA's convs for it on a CPU in float32 (generators' inference:
      benchmarks/archs.py; training: benchmarks/run.py --compare-conv): the Upscaler's and the trainer's 'auto' use
      it there, and a discriminator without it trains with 'fast' when the run's conv is 'winograd'.
    """

    name: str
    module: type
    role: str
    detect: Callable[[StateDict], dict[str, Any] | None]
    to_flax: Callable[[StateDict, dict[str, Any]], dict]
    signature_keys: tuple[str, ...]
    value_range: tuple[float, float] = (0.0, 1.0)
    colour: str = "rgb"
    exact_tiling: bool = True
    cpu_winograd: bool = True

    def winograd_pays(self, dtype: Any) -> bool:
        """Whether Winograd is this network's CPU path in ``dtype`` (it serves float32 only)."""
        return self.cpu_winograd and jnp.dtype(dtype) == jnp.float32

    def build(self, config: dict[str, Any]):
        return self.module(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    if arch.name in REGISTRY and REGISTRY[arch.name] is not arch:
        raise ValueError(f"architecture {arch.name!r} is registered twice")
    if arch.role not in ("generator", "discriminator", "features"):
        raise ValueError(f"architecture {arch.name!r}: role {arch.role!r} is not generator/discriminator/features")
    REGISTRY[arch.name] = arch
    return arch


def get(name: str) -> Architecture:
    if name not in REGISTRY:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


# Legacy jsr_model.json "kind" values (before architectures were named) -> architecture.
LEGACY_KINDS = {"generator": "srresnet", "discriminator": "srgan_discriminator", "vgg19": "vgg19"}


def resolve(name: str) -> Architecture:
    """An architecture by name, or by the model kind older model directories recorded."""
    return get(LEGACY_KINDS.get(name, name) if name not in REGISTRY else name)


def detect(state: StateDict, role: str | None = None) -> list[tuple[Architecture, dict[str, Any]]]:
    """Every registered architecture (of ``role``) whose detection rule accepts ``state``, with its config."""
    found = []
    for arch in REGISTRY.values():
        if role is None or arch.role == role:
            config = arch.detect(state)
            if config is not None:
                found.append((arch, config))
    return found


def closest(state: StateDict, count: int = 3) -> list[tuple[Architecture, list[str]]]:
    """The architectures sharing the most signature keys with ``state``, each with the signature keys it lacks."""
    scored = []
    for arch in REGISTRY.values():
        missing = [k for k in arch.signature_keys if k not in state]
        scored.append((len(missing) / max(len(arch.signature_keys), 1), arch.name, arch, missing))
    scored.sort(key=lambda t: (t[0], t[1]))
    return [(arch, missing) for _, _, arch, missing in scored[:count]]


def architecture_of(module: Any) -> Architecture:
    """The architecture whose Flax module class ``module`` is (the first registered, for shared classes)."""
    for arch in REGISTRY.values():
        if type(module) is arch.module:
            return arch
    raise KeyError(f"{type(module).__name__} is not a registered architecture's module")


def value_range(module: Any) -> tuple[float, float]:
    """The range of images ``module`` takes and returns: its own ``value_range`` where one class serves several
    layouts, else its architecture's."""
    return tuple(getattr(module, "value_range", None) or architecture_of(module).value_range)


def convert_range(x, source: tuple[float, float], target: tuple[float, float]):
    """Images in the range ``source`` -> ``target`` (untouched when they are the same)."""
    if tuple(source) == tuple(target):
        return x
    (a, b), (c, d) = source, target
    return (x - a) * ((d - c) / (b - a)) + c


def to_model_range(module: Any, x01):
    lo, hi = value_range(module)
    return x01 if (lo, hi) == (0.0, 1.0) else x01 * (hi - lo) + lo


def from_model_range(module: Any, y):
    lo, hi = value_range(module)
    return y if (lo, hi) == (0.0, 1.0) else (y - lo) / (hi - lo)


# the built-in architectures
from jsr.archs import compact, edsr, fsrcnn, imdn, pan, rrdbnet, srgan_discriminator, srresnet  # noqa: E402, F401, I001
from jsr.archs import unet_discriminator, vdsr, vgg19  # noqa: E402, F401, I001
