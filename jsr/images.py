"""Reading, converting, resizing and writing images on the host (numpy + Pillow); one place for all modes.

Arrays are HWC. ``read_image`` normalises every Pillow mode (grayscale, palette, 16-bit, RGBA, CMYK, ...)
to float32 RGB in [0, 1] plus an optional alpha plane, so callers never branch on modes themselves. Every read
here applies the EXIF orientation, takes the first frame of an animation (with a notice), refuses images over a
pixel limit from their header alone (decompression bombs cost nothing) and PNGs whose data ends early.
"""

from __future__ import annotations

import argparse
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


RAISE_LIMIT = "raise the limit with --max-pixels N (jsr.upscale, jsr.evaluate) or config.data.max_image_pixels=N"
# EXIF orientation -> the transposition that makes the picture upright (as PIL.ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_OPEN_LOCK = threading.Lock()
_NOTICE_LOCK = threading.Lock()
_NOTICED: set[str] = set()


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> LoadedImage:
    """Decode ``path`` fully into float RGB [+ alpha], upright (EXIF orientation applied), its first frame only.

    Raises ``ImageReadError`` naming the file for anything unusable: not an image, cut or short data (found here,
    not later), or a header claiming more than ``max_pixels`` (default ``MAX_PIXELS``), refused before decoding.
    """
    path = Path(path)
    with _read_errors(path), _open(path, max_pixels) as im:
        frames, orientation = _frame_count(im), _orientation(im)
        im.load()
        _check_complete(path, im)
        upright = None if _oriented_by_pillow(im) else _UPRIGHT.get(orientation)
        loaded = _convert(im if upright is None else im.transpose(upright))
    if frames > 1:
        _notice_once(path, f"note: {path}: {frames} frames (an animation or pages); only the first frame is used")
    return loaded


def image_size(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[int, int]:
    """(height, width) of the image ``read_image`` would return (EXIF orientation applied), from the header alone."""
    path = Path(path)
    with _read_errors(path), _open(path, max_pixels) as im:
        width, height = _stored_size(im)
        return (width, height) if _orientation(im) >= 5 else (height, width)  # 5-8 turn the picture by 90 degrees


def pixel_limit(text: str) -> int:
    """A ``--max-pixels`` value: a positive whole number of pixels (``100000000`` or ``1e8``)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of pixels (e.g. 100000000 or 1e8)")
    return int(value)


@contextlib.contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """Pillow's and the file system's errors -> one ``ImageReadError`` line naming ``path``."""
    try:
        yield
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except Image.DecompressionBombError as e:  # Pillow's own limit, met past the header (a GIF frame, a TIFF tile)
        raise ImageReadError(f"{path}: too large to decode ({e}); if the image is real, {RAISE_LIMIT}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as e:
        raise ImageReadError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


@contextlib.contextmanager
def _open(path: Path, max_pixels: int | None) -> Iterator[Image.Image]:
    """The image with only its header read, refused when it claims more than ``max_pixels``: nothing decoded yet."""
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    # a file object, not a name: Pillow memory-maps named raw TIFFs and then misreads those it turns upright
    with open(path, "rb") as file:
        with _OPEN_LOCK:  # Pillow's bomb limit is one global; our limit replaces it while a header is read
            if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
                Image.MAX_IMAGE_PIXELS = limit  # a higher limit asked for also holds where Pillow checks later
            pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = Image.open(file)
            finally:
                Image.MAX_IMAGE_PIXELS = pillow_limit
        with im:
            if im.width * im.height > limit:
                raise ImageReadError(
                    f"{path}: {im.width}x{im.height} pixels ({im.width * im.height / 1e6:.3g} megapixels) is over the "
                    f"limit of {limit / 1e6:.3g} megapixels, so it was not decoded (a decompression bomb?); if the "
                    f"image is real, {RAISE_LIMIT}"
                )
            yield im


def _frame_count(im: Image.Image) -> int:
    """Frames of an animation or pages of a file; a multi-picture JPEG (MPO: the photo plus previews) counts one."""
    return 1 if im.format == "MPO" else int(getattr(im, "n_frames", 1))


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1 = upright .. 8) from what the header holds; damaged EXIF counts as upright."""
    try:
        # Image.getexif, not the plugin's: PNG's decodes the whole image to look for an eXIf chunk after the data
        value = Image.Image.getexif(im).get(ExifTags.Base.Orientation, 1)
        return value if value in _UPRIGHT else 1
    except Exception:  # noqa: BLE001 - a damaged tag must not cost the picture
        return 1


def _oriented_by_pillow(im: Image.Image) -> bool:
    """Whether Pillow turned the image upright itself on load: newer versions do so for TIFFs and drop the tag."""
    return hasattr(im, "tag_v2") and ExifTags.Base.Orientation not in im.tag_v2


def _stored_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) of the raster as stored; newer Pillow versions report a TIFF's upright size instead."""
    tags = getattr(im, "tag_v2", None)
    if tags is not None and ExifTags.Base.ImageWidth in tags and ExifTags.Base.ImageLength in tags:
        return int(tags[ExifTags.Base.ImageWidth]), int(tags[ExifTags.Base.ImageLength])
    return im.width, im.height


def _notice_once(path: Path, message: str) -> None:
    """One line on stderr above any progress bar, once per file and process (training reads files every epoch)."""
    key = os.path.abspath(path)
    with _NOTICE_LOCK:
        if key in _NOTICED:
            return
        _NOTICED.add(key)
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


# ---------------------------------------------------------------------------------------------- PNG data length

_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type: gray, RGB, palette, gray + alpha, RGBA
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PIECE = 1 << 20


def _check_complete(path: Path, im: Image.Image) -> None:
    """Pillow stops quietly where a PNG's compressed stream ends and leaves the rest black (a 109-byte file can
    claim 10000x10000 pixels), also with ``ImageFile.LOAD_TRUNCATED_IMAGES``: count what the data inflates to."""
    if im.format == "PNG" and not _png_data_complete(path):
        raise ImageReadError(
            f"{path}: truncated: its image data ends before the {im.width}x{im.height} pixels its header declares; "
            "re-export or replace the file"
        )


def _png_data_complete(path: Path) -> bool:
    """Whether the IDAT stream inflates to the scanline bytes the IHDR implies (in 1 MiB pieces, nothing kept)."""
    expected, produced, inflater = None, 0, zlib.decompressobj()
    with open(path, "rb") as f:
        f.seek(8)  # the signature
        while expected is None or produced < expected:
            head = f.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IHDR":
                width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", f.read(13))
                expected = _png_scanline_bytes(width, height, depth * _PNG_CHANNELS.get(colour, 1), interlace)
                f.seek(length - 13 + 4, os.SEEK_CUR)
            elif kind == b"IDAT":
                produced += _inflated_bytes(inflater, f, length)
                f.seek(4, os.SEEK_CUR)  # the CRC
            elif kind == b"IEND":
                break
            else:
                f.seek(length + 4, os.SEEK_CUR)
    if expected is not None and produced < expected:
        produced += len(inflater.flush())  # output zlib still held when the input ran out
    return expected is None or produced >= expected


def _inflated_bytes(inflater, f, length: int) -> int:
    """Bytes one IDAT chunk of ``length`` adds to the inflated stream; leaves ``f`` after the chunk's data."""
    count = 0
    while length > 0 and not inflater.eof:
        data = f.read(min(length, _PIECE))
        if not data:
            break
        length -= len(data)
        while data and not inflater.eof:
            count += len(inflater.decompress(data, _PIECE))
            data = inflater.unconsumed_tail
    f.seek(length, os.SEEK_CUR)
    return count


def _png_scanline_bytes(width: int, height: int, bits_per_pixel: int, interlaced: int) -> int:
    """Bytes of filtered scanlines (one filter byte per row, per Adam7 pass when interlaced)."""
    total = 0
    for x0, y0, dx, dy in _ADAM7 if interlaced else ((0, 0, 1, 1),):
        columns, rows = -(-max(width - x0, 0) // dx), -(-max(height - y0, 0) // dy)
        if columns and rows:
            total += rows * (1 + (columns * bits_per_pixel + 7) // 8)
    return total


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


DOWNSCALES = (*RESAMPLING, "matlab")  # 'matlab': MATLAB's imresize bicubic, which published tables use


def downscale(hr: np.ndarray, scale: int, method: str = "bicubic") -> np.ndarray:
    """LR of an HR image whose sides are multiples of ``scale``: Pillow's ``method``, or ``'matlab'`` (bit-exact
    MATLAB ``imresize(hr, 1/scale, 'bicubic')`` for uint8, ``jsr.matlab_resize``)."""
    h, w = hr.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of the scale {scale}; crop_to_multiple first")
    if method == "matlab":
        from jsr.matlab_resize import imresize

        return imresize(hr, output_shape=(h // scale, w // scale))
    return resize(hr, (h // scale, w // scale), method)


class DuplicateStem(UserError):
    """Two images in one folder differ only by suffix."""


def files_by_stem(folder: str | os.PathLike) -> dict[str, Path]:
    """Image files under ``folder`` keyed by relative path without suffix ('sub/name'); two files of one stem are an
    error (which one would be meant is unknowable)."""
    folder = Path(folder)
    found: dict[str, Path] = {}
    for path in list_images(folder):
        stem = path.relative_to(folder).with_suffix("").as_posix()
        if stem in found:
            raise DuplicateStem(f"{folder}: {found[stem]} and {path} have the same name {stem!r}; keep one")
        found[stem] = path
    return found


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 HWC (RGB / RGBA) or HW array as PNG atomically: a staging file renamed into place."""
    return atomic.write_file(path, lambda f: Image.fromarray(np.asarray(image, np.uint8)).save(f, format="PNG"))
