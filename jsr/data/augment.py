"""On-device augmentation of (LR, HR) pairs: pure JAX, jit- and vmap-able, magnitudes as per-example arrays.

Images are float32 HWC in [0, 1] (use ``to_unit`` on the uint8 batches of the pipeline); the fill value is in the
same units (1.0 = white). One draw per example gives a 3x3 homography (random affine: rotation, translation, scale,
x-shear, then random perspective, as torchvision's RandomAffine + RandomPerspective) applied with ONE bilinear
resample, then grayscale, flips and transpose as exact index operations.

Modes:
- ``"derive"``: warp HR, then LR = antialiased bicubic downscale of the warped HR on device (consistent pairs).
- ``"paired"``: warp the given LR and HR with the same transform in relative coordinates.

All magnitudes zero (and probabilities zero) give back the input exactly: an identity homography samples every
output pixel exactly at its own pixel centre.

Parameters (``params``), each of shape (B,) unless noted; scalars broadcast:
  rotation_deg   angle ~ U(-r, r) degrees, positive = counter-clockwise as displayed
  translate      (B, 2): shift ~ U(-t, t) * (width, height)
  scale          zoom factor ~ U(1 - s, 1 + s)   (torchvision's scale=(0.7, 1.3) is s = 0.3)
  shear_deg      x-shear angle ~ U(-d, d) degrees
  perspective_distortion, perspective_prob   torchvision RandomPerspective(distortion_scale, p)
  grayscale_prob, hflip_prob, vflip_prob, transpose_prob   Bernoulli probabilities (transpose needs square images)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates

from jsr.config import AUGMENT_PARAM_SHAPES, STUDY_RECIPE  # noqa: F401  (STUDY_RECIPE: read here by its users)

PARAM_SHAPES = AUGMENT_PARAM_SHAPES  # the config fields of the magnitudes
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision rgb_to_grayscale (ITU-R 601-2)
MODES = ("derive", "paired")

Params = dict[str, jax.Array]


def to_unit(x: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return jnp.asarray(x, jnp.float32) / 255.0


def make_params(batch_size: int, **magnitudes: Any) -> Params:
    """Per-example parameter arrays; unnamed ones are zero, scalars (or a 2-vector translate) broadcast."""
    unknown = set(magnitudes) - set(PARAM_SHAPES)
    if unknown:
        raise ValueError(f"unknown augmentation parameters {sorted(unknown)}; known: {sorted(PARAM_SHAPES)}")
    params = {}
    for name, shape in PARAM_SHAPES.items():
        value = jnp.asarray(magnitudes.get(name, 0.0), jnp.float32)
        params[name] = jnp.broadcast_to(value, (batch_size, *shape))
    return params


def zero_params(batch_size: int) -> Params:
    return make_params(batch_size)


# ----------------------------------------------------------------------------------------------- draws


def sample_draw(key: jax.Array, params: Params) -> dict[str, jax.Array]:
    """One example's random transform, in relative units (independent of the image size)."""
    k = jax.random.split(key, 10)
    sym = lambda i, shape=(): jax.random.uniform(k[i], shape, minval=-1.0, maxval=1.0)
    coin = lambda i, p: jax.random.uniform(k[i]) < p
    return {
        "angle_deg": params["rotation_deg"] * sym(0),
        "translate": params["translate"] * sym(1, (2,)),  # fraction of (width, height)
        "zoom": 1.0 + params["scale"] * sym(2),
        "shear_deg": params["shear_deg"] * sym(3),
        # Corners move inward by up to distortion * half the side, as torchvision's RandomPerspective.
        "corners": params["perspective_distortion"] * jax.random.uniform(k[4], (4, 2)),
        "perspective": coin(5, params["perspective_prob"]) & (params["perspective_distortion"] > 0),
        "gray": coin(6, params["grayscale_prob"]),
        "hflip": coin(7, params["hflip_prob"]),
        "vflip": coin(8, params["vflip_prob"]),
        "transpose": coin(9, params["transpose_prob"]),
    }


def identity_draw() -> dict[str, jax.Array]:
    """A draw that changes nothing; tests and callers override single fields."""
    return sample_draw(jax.random.key(0), {name: value[0] for name, value in zero_params(1).items()})


# ----------------------------------------------------------------------------------------------- geometry


def inverse_affine(draw: dict, height: int, width: int) -> jax.Array:
    """3x3 map from output to source centred pixel coordinates (x right, y down) of the affine part.

    Forward (content) map: p_out = T + R(angle) @ Shear @ (zoom * p_src); inverted analytically so that the
    identity is exact.
    """
    a = jnp.deg2rad(draw["angle_deg"])
    cos, sin = jnp.cos(a), jnp.sin(a)
    sh = jnp.tan(jnp.deg2rad(draw["shear_deg"]))
    rot = jnp.array([[cos, sin], [-sin, cos]])  # y points down: this turns content counter-clockwise on screen
    forward = rot @ jnp.array([[1.0, sh], [0.0, 1.0]]) * draw["zoom"]
    det = forward[0, 0] * forward[1, 1] - forward[0, 1] * forward[1, 0]
    inv = jnp.array([[forward[1, 1], -forward[0, 1]], [-forward[1, 0], forward[0, 0]]]) / det
    t = draw["translate"] * jnp.array([width, height], jnp.float32)
    top = jnp.concatenate([inv, -(inv @ t)[:, None]], axis=1)
    return jnp.concatenate([top, jnp.array([[0.0, 0.0, 1.0]])], axis=0)


def homography_from_points(src: jax.Array, dst: jax.Array) -> jax.Array:
    """3x3 H with H(src_k) = dst_k for four (x, y) points (the standard 8x8 linear system)."""
    x, y = src[:, 0], src[:, 1]
    u, v = dst[:, 0], dst[:, 1]
    zeros, ones = jnp.zeros(4), jnp.ones(4)
    rows_u = jnp.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], axis=1)
    rows_v = jnp.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], axis=1)
    h = jnp.linalg.solve(jnp.concatenate([rows_u, rows_v]), jnp.concatenate([u, v]))
    return jnp.append(h, 1.0).reshape(3, 3)


def inverse_perspective(draw: dict, height: int, width: int) -> jax.Array:
    """3x3 map from output to source centred coordinates of the perspective part (identity when not drawn)."""
    signs = jnp.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])  # tl, tr, br, bl
    # Solved in units of the half sides (well conditioned), then rescaled to pixels.
    moved = signs * (1.0 - draw["corners"])
    h_unit = homography_from_points(moved, signs)  # output (moved corners) -> source (corners)
    half = jnp.diag(jnp.array([width / 2, height / 2, 1.0], jnp.float32))
    h_pix = half @ h_unit @ jnp.diag(jnp.array([2 / width, 2 / height, 1.0], jnp.float32))
    return jnp.where(draw["perspective"], h_pix, jnp.eye(3))


def sampling_matrix(draw: dict, height: int, width: int) -> jax.Array:
    """Output -> source centred coordinates: perspective inverse first, then affine inverse (one resample)."""
    return inverse_affine(draw, height, width) @ inverse_perspective(draw, height, width)


def warp(image: jax.Array, matrix: jax.Array, fill: jax.Array | float = 1.0) -> jax.Array:
    """Resample HWC ``image`` at ``matrix`` @ (output centred coords); outside the source is ``fill``.

    Bilinear (``map_coordinates`` order 1); an identity matrix returns the input bit for bit.
    """
    h, w = image.shape[:2]
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    points = jnp.stack([cols - cx, rows - cy, jnp.ones_like(rows)])  # (3, H, W)
    src = jnp.einsum("ij,jhw->ihw", matrix, points)
    src_x, src_y = src[0] / src[2] + cx, src[1] / src[2] + cy
    # A ones plane tells how much of each output pixel came from inside the image; the rest is fill.
    planes = jnp.concatenate([image, jnp.ones_like(image[..., :1])], axis=-1)
    sample = lambda plane: map_coordinates(plane, [src_y, src_x], order=1, mode="constant", cval=0.0)
    out = jax.vmap(sample, in_axes=2, out_axes=2)(planes)
    inside = out[..., -1:]
    return out[..., :-1] + (1.0 - inside) * jnp.asarray(fill, image.dtype)


def grayscale(image: jax.Array) -> jax.Array:
    gray = image @ jnp.asarray(GRAY_WEIGHTS, image.dtype)
    return jnp.repeat(gray[..., None], image.shape[-1], axis=-1)


def apply_draw(image: jax.Array, draw: dict, fill: jax.Array | float = 1.0) -> jax.Array:
    """Warp + grayscale + flips + transpose of one HWC image, the geometry scaled to its own size."""
    h, w = image.shape[:2]
    out = warp(image, sampling_matrix(draw, h, w), fill)
    out = jnp.where(draw["gray"], grayscale(out), out)
    out = jnp.where(draw["hflip"], out[:, ::-1], out)
    out = jnp.where(draw["vflip"], out[::-1], out)
    if h == w:
        out = jnp.where(draw["transpose"], jnp.swapaxes(out, 0, 1), out)
    return out


def device_downscale(hr: jax.Array, scale: int) -> jax.Array:
    """Antialiased bicubic downscale of an HWC image by ``scale``, clipped to [0, 1], unrounded: MATLAB's ``imresize``
    (the benchmark LR) but for its rounding between passes (tests/test_matlab_resize.py). jax's resize renormalises
    the kernel at the image edges where MATLAB mirrors the image (up to 6.8 grey levels apart there); padding
    symmetrically by the kernel's reach (2 x scale HR pixels) and cropping the result gives MATLAB's edges."""
    h, w, c = hr.shape
    pad = 2 * scale
    if h % scale or w % scale or min(h, w) < pad:  # no whole LR pixel of padding: the edge-renormalised form
        return jnp.clip(jax.image.resize(hr, (h // scale, w // scale, c), "bicubic", antialias=True), 0.0, 1.0)
    padded = jnp.pad(hr, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    lr = jax.image.resize(padded, (h // scale + 4, w // scale + 4, c), "bicubic", antialias=True)
    return jnp.clip(lr[2:-2, 2:-2], 0.0, 1.0)


# ----------------------------------------------------------------------------------------------- entry points


def augment_pair(
    key: jax.Array,
    hr: jax.Array,
    lr: jax.Array | None,
    params: Params,
    *,
    scale: int = 4,
    mode: str = "derive",
    fill: jax.Array | float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """One example: ``params`` holds this example's magnitudes (no batch axis). Returns (hr, lr)."""
    draw = sample_draw(key, params)
    hr_out = apply_draw(hr, draw, fill)
    if mode == "derive":
        return hr_out, device_downscale(hr_out, scale)
    if mode == "paired":
        if lr is None:
            raise ValueError("mode 'paired' needs the LR images")
        return hr_out, apply_draw(lr, draw, fill)
    raise ValueError(f"unknown augmentation mode {mode!r}; choose from {MODES}")


def augment_batch(
    key: jax.Array,
    hr: jax.Array,
    lr: jax.Array | None,
    params: Params,
    *,
    scale: int = 4,
    mode: str = "derive",
    fill: jax.Array | float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """A batch (B, H, W, C) in [0, 1], each example with its own key and its own magnitudes ``params[name][b]``.

    Call it inside the jitted step; ``scale``, ``mode`` are static, ``fill`` may be a scalar or per channel.
    Transpose needs square images (crops are); on non-square images it is ignored.
    """
    check_params(params, hr.shape[0])
    if mode not in MODES:
        raise ValueError(f"unknown augmentation mode {mode!r}; choose from {MODES}")
    if mode == "paired" and lr is None:
        raise ValueError("mode 'paired' needs the LR images")
    keys = jax.random.split(key, hr.shape[0])
    one = lambda k, h, low, p: augment_pair(k, h, low, p, scale=scale, mode=mode, fill=fill)
    if mode == "derive":  # the given LR is not used: it is re-made from the warped HR
        return jax.vmap(lambda k, h, p: one(k, h, None, p))(keys, hr, params)
    return jax.vmap(one)(keys, hr, lr, params)


def check_params(params: Params, batch_size: int) -> None:
    """Clear errors for a missing parameter or one without a per-example leading axis."""
    missing = set(PARAM_SHAPES) - set(params)
    if missing:
        raise ValueError(f"augmentation params miss {sorted(missing)}; build them with make_params(batch_size, ...)")
    for name, shape in PARAM_SHAPES.items():
        got = tuple(np.shape(params[name]))
        if got != (batch_size, *shape):
            raise ValueError(f"augmentation param {name!r} has shape {got}, expected {(batch_size, *shape)}")
