"""Reading, converting, resizing and writing images on the host (numpy + Pillow); one place for all modes.

Arrays are HWC. ``read_image`` normalises every Pillow mode (grayscale, palette, 16-bit, RGBA, CMYK, ...)
to float32 RGB in [0, 1] plus an optional alpha plane, so callers never branch on modes themselves. Every read
here applies the EXIF orientation, takes the first frame of an animation (with a notice), refuses images over a
pixel limit from their header alone (decompression bombs cost nothing) and PNGs whose data ends early.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageColor, UnidentifiedImageError

from jsr import atomic
from jsr.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")
# Largest image read by default: every camera up to 61 MP fits, and 64 MP already decode to 768 MB of float32 RGB
# and upscale x4 to a gigapixel (3 GB), so more should be asked for (--max-pixels, config.data.max_image_pixels).
MAX_PIXELS = 64_000_000
RESAMPLING = {
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


class ImageReadError(UserError):
    """A file that is not a readable image; the message names it."""


@dataclass
class LoadedImage:
    """``rgb`` float32 (H, W, 3) in [0, 1]; ``alpha`` float32 (H, W) in [0, 1] or None; source bit depth."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    bits: int

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[0], self.rgb.shape[1]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted), chosen by suffix."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: str | os.PathLike) -> LoadedImage:
    """Decode ``path`` fully (truncated files fail here, not later) into float RGB [+ alpha]."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return _convert(im)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def _convert(im: Image.Image) -> LoadedImage:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit (or 32-bit int) grayscale
        gray = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or gray.max() > 255 else 255.0
        gray = np.clip(gray / top, 0, 1).astype(np.float32)
        return LoadedImage(np.repeat(gray[..., None], 3, axis=2), None, 16)
    if mode == "F":
        gray = np.clip(np.asarray(im, dtype=np.float32), 0, 1)
        return LoadedImage(np.repeat(gray[..., None], 3, axis=2), None, 32)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        return LoadedImage(rgba[..., :3].copy(), rgba[..., 3].copy(), 8)
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return LoadedImage(rgb, None, 8)


def parse_colour(spec: str) -> tuple[float, float, float]:
    """'white', '#ff8800' or '255,136,0' -> RGB in [0, 1]."""
    try:
        if "," in spec:
            parts = [int(v) for v in spec.split(",")]
            if len(parts) != 3 or not all(0 <= v <= 255 for v in parts):
                raise ValueError(spec)
            rgb = tuple(parts)
        else:
            rgb = ImageColor.getrgb(spec)[:3]
    except ValueError:
        raise ValueError(f"cannot read colour {spec!r}: use a name (white), #rrggbb or r,g,b in 0..255") from None
    return tuple(v / 255.0 for v in rgb)


def composite(rgb: np.ndarray, alpha: np.ndarray, background: tuple[float, float, float]) -> np.ndarray:
    """Alpha-composite ``rgb`` over a flat ``background`` colour (non-premultiplied alpha)."""
    a = alpha[..., None]
    return (rgb * a + np.asarray(background, np.float32) * (1 - a)).astype(np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8, rounding to nearest."""
    return np.clip(np.rint(np.asarray(x, np.float32) * 255.0), 0, 255).astype(np.uint8)


def resize(image: np.ndarray, size: tuple[int, int], method: str = "bicubic") -> np.ndarray:
    """Resize an HWC (or HW) array to ``size`` = (H, W) with Pillow; uint8 stays uint8, floats stay float32.

    Floats are resized channel by channel in Pillow's 32-bit float mode, so nothing is quantised.
    """
    if method not in RESAMPLING:
        raise ValueError(f"unknown resampling {method!r}; choose from {sorted(RESAMPLING)}")
    h, w = size
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize((w, h), RESAMPLING[method]))
    planes = image[..., None] if image.ndim == 2 else image
    out = np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(planes[..., c], np.float32)).resize((w, h), RESAMPLING[method])
            )
            for c in range(planes.shape[-1])
        ],
        axis=-1,
    )
    return out[..., 0] if image.ndim == 2 else out


def crop_to_multiple(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop bottom/right so height and width are multiples of ``scale`` (the papers' HR convention)."""
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale]


def downscale(hr: np.ndarray, scale: int, method: str = "bicubic") -> np.ndarray:
    """LR of an HR image whose sides are multiples of ``scale``."""
    h, w = hr.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of the scale {scale}; crop_to_multiple first")
    return resize(hr, (h // scale, w // scale), method)


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 HWC (RGB / RGBA) or HW array as PNG atomically: a staging file renamed into place."""
    return atomic.write_file(path, lambda f: Image.fromarray(np.asarray(image, np.uint8)).save(f, format="PNG"))
