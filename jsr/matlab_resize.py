"""MATLAB-compatible bicubic ``imresize`` in numpy.

Reproduces ``imresize(A, scale, 'bicubic')`` (antialiased when shrinking) bit for bit for uint8 images, which is
how the standard SR benchmark LR files (e.g. Set5, Set14) were made. The arithmetic follows MATLAB's
``contributions`` and ``cubic`` step by step in float64 (same kernel formula, taps summed in the same order), so
values that sit on a rounding boundary round the way MATLAB rounds them.
"""

from __future__ import annotations

import math

import numpy as np

_KERNEL_WIDTH = 4.0  # Keys cubic: support [-2, 2]


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic kernel with a = -0.5, written as MATLAB writes it (same operations, same rounding)."""
    absx = np.abs(x)
    absx2 = absx**2
    absx3 = absx**3
    inner = (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
    outer = (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((1 < absx) & (absx <= 2))
    return inner + outer


def _sequential_sum(a: np.ndarray) -> np.ndarray:
    """Sum over the last axis left to right, as MATLAB does; numpy's pairwise sum would round differently."""
    total = np.zeros(a.shape[:-1], dtype=np.float64)
    for k in range(a.shape[-1]):
        total += a[..., k]
    return total


def contributions(in_length: int, out_length: int, scale: float, antialiasing: bool = True):
    """Per-output-pixel input indices (0-based, mirrored at the edges) and normalised weights, shape (out, taps)."""
    if scale < 1 and antialiasing:
        # Stretching the kernel by 1/scale makes it a low-pass filter at the output's Nyquist rate.
        def kernel(x):
            return scale * _cubic(scale * x)

        width = _KERNEL_WIDTH / scale
    else:
        kernel, width = _cubic, _KERNEL_WIDTH
    x = np.arange(1, out_length + 1, dtype=np.float64)[:, None]
    u = x / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinate whose pixel centres line up with the output's
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    indices = left + np.arange(taps, dtype=np.float64)[None, :]
    weights = kernel(u - indices)
    weights = weights / _sequential_sum(weights)[:, None]
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])  # symmetric edge handling
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    keep = np.any(weights != 0, axis=0)  # taps that are zero for every output pixel carry no information
    return indices[:, keep], weights[:, keep]


def _resize_axis(x: np.ndarray, axis: int, indices: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted sum of gathered input lines along ``axis``, tap by tap in MATLAB's order."""
    lines = np.ascontiguousarray(np.moveaxis(x, axis, 0), dtype=np.float64)  # whole rows per gather: cache friendly
    out = np.zeros((weights.shape[0],) + lines.shape[1:])
    tap = np.empty_like(out)
    column = (weights.shape[0],) + (1,) * (lines.ndim - 1)
    for k in range(weights.shape[1]):
        np.take(lines, indices[:, k], axis=0, out=tap)
        tap *= weights[:, k].reshape(column)
        out += tap
    return np.moveaxis(out, 0, axis)


def _to_integer(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """MATLAB's cast to an integer class: saturate, then round half away from zero. Overwrites ``x``."""
    info = np.iinfo(dtype)
    np.clip(x, info.min, info.max, out=x)  # clipping first cannot change the rounded value
    if info.min >= 0:
        x += 0.5
        np.floor(x, out=x)
    else:
        x[:] = np.copysign(np.floor(np.abs(x) + 0.5), x)
    return x.astype(dtype)


def _output_shape_and_scales(in_shape, scale, output_shape):
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale or output_shape")
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        # MATLAB uses the requested scale for the weights and ceil(scale * size) for the size.
        return tuple(math.ceil(scale * n) for n in in_shape), (float(scale), float(scale))
    out = tuple(int(n) for n in output_shape)
    if len(out) != 2 or min(out) < 1:
        raise ValueError(f"output_shape must be two positive ints, got {output_shape}")
    return out, tuple(o / n for o, n in zip(out, in_shape, strict=True))


def imresize(
    image: np.ndarray,
    scale: float | None = None,
    output_shape: tuple[int, int] | None = None,
    antialiasing: bool = True,
) -> np.ndarray:
    """MATLAB ``imresize(image, scale, 'bicubic')`` or ``imresize(image, [rows cols], 'bicubic')``.

    ``image`` is HW or HWC (any trailing axes are carried along). Integer inputs come back in the same dtype and are
    rounded after each pass, as MATLAB does; float inputs are computed and returned unrounded in their own dtype.
    For the SR benchmark convention (LR = bicubic of the HR mod-cropped to a multiple of s), see ``downscale``.
    """
    image = np.asarray(image)
    if image.ndim < 2:
        raise ValueError(f"expected an HW or HWC image, got shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise TypeError(f"unsupported dtype {image.dtype}")
    out_shape, scales = _output_shape_and_scales(image.shape[:2], scale, output_shape)
    is_int = np.issubdtype(image.dtype, np.integer)
    plans = [contributions(image.shape[a], out_shape[a], scales[a], antialiasing) for a in (0, 1)]
    # MATLAB resizes the more strongly shrunk axis first; a stable sort keeps height first on ties.
    order = sorted((0, 1), key=lambda a: scales[a])
    result = image
    for axis in order:
        resized = _resize_axis(result, axis, *plans[axis])
        result = _to_integer(resized, image.dtype) if is_int else resized
    return np.ascontiguousarray(result if is_int else result.astype(image.dtype))


def mod_crop(image: np.ndarray, factor: int) -> np.ndarray:
    """Crop the bottom/right so height and width are multiples of ``factor`` (the SR benchmark HR convention)."""
    h, w = image.shape[:2]
    return image[: h - h % factor, : w - w % factor]


def downscale(hr: np.ndarray, factor: int) -> np.ndarray:
    """The benchmark LR of ``hr``: MATLAB bicubic by 1/factor of the mod-cropped HR."""
    return imresize(mod_crop(hr, factor), scale=1 / factor)
