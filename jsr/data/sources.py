"""Random-access sources of (LR, HR) pairs: TFDS (pokemon, div2k), image folders, the bundled sample photos.

Every source has ``__len__`` and ``__getitem__(i) -> {"hr": uint8 (H, W, 3), "lr": uint8 (H/s, W/s, 3), "id": str}``
with ``H = scale * h`` exactly, so Grain can read it by index from any thread or worker process.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jsr import images
from jsr.errors import UserError

SPLITS = ("train", "validation", "test")


class BadFilesError(UserError, ValueError):
    """Some files of a folder cannot be used; ``bad`` lists ``(path, reason)`` for every one of them."""

    def __init__(self, bad: Sequence[tuple[str, str]], folder: str):
        self.bad = list(bad)
        lines = "\n".join(f"  {path}: {reason}" for path, reason in self.bad)
        super().__init__(
            f"{len(self.bad)} unusable file(s) in {folder}:\n{lines}\n"
            "Fix or remove them, or set config.data.skip_bad_files=True to train without them."
        )


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    return split


def to_rgb_uint8(image: images.LoadedImage, background: tuple[float, float, float]) -> np.ndarray:
    """Any decoded image -> uint8 RGB; transparent pixels are composited on ``background``."""
    rgb = image.rgb if image.alpha is None else images.composite(image.rgb, image.alpha, background)
    return images.to_uint8(rgb)


def make_pair(hr: np.ndarray, scale: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """HR cropped to a multiple of ``scale`` (bottom/right) and its downscale (Pillow's, or MATLAB's imresize)."""
    hr = images.crop_to_multiple(hr, scale)
    return hr, images.downscale(hr, scale, method)


# ----------------------------------------------------------------------------------------------- in memory


class ArraySource:
    """Pairs held in memory (the sample photos, tests)."""

    def __init__(self, pairs: Sequence[tuple[str, np.ndarray, np.ndarray]]):
        self._pairs = list(pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict:
        ident, hr, lr = self._pairs[index]
        return {"hr": hr, "lr": lr, "id": ident}

    def sizes(self) -> list[tuple[int, int]]:
        """HR (H, W) of every record, without decoding anything."""
        return [hr.shape[:2] for _, hr, _ in self._pairs]


# The colour photos that ship inside scikit-image (no download). Chelsea and coffee are held out.
SAMPLE_NAMES = {
    "train": (
        "astronaut",
        "immunohistochemistry",
        "rocket",
        "hubble_deep_field",
        "motorcycle_left",
        "motorcycle_right",
    ),
    "validation": ("chelsea", "coffee"),
    "test": ("chelsea", "coffee"),
}


# Their files inside skimage.data, read with Pillow: skimage.data's loaders import skimage.io (~0.3 s per start).
SAMPLE_FILES = {
    "astronaut": "astronaut.png",
    "immunohistochemistry": "ihc.png",
    "rocket": "rocket.jpg",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
}


def _sample_photo(name: str) -> np.ndarray:
    import importlib.resources

    from PIL import Image

    path = importlib.resources.files("skimage.data") / SAMPLE_FILES[name]
    if path.is_file():
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    import skimage.data  # a scikit-image that keeps its photos elsewhere: its own loaders

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name.endswith("left") else right
    return getattr(skimage.data, name)()


def samples_source(split: str, scale: int = 4, downscale: str = "bicubic") -> ArraySource:
    """The bundled scikit-image photos as pairs; fully offline."""
    pairs = []
    for name in SAMPLE_NAMES[check_split(split)]:
        hr, lr = make_pair(np.ascontiguousarray(_sample_photo(name)[..., :3], np.uint8), scale, downscale)
        pairs.append((name, hr, lr))
    return ArraySource(pairs)


# ----------------------------------------------------------------------------------------------- folders


@dataclass(frozen=True)
class FolderRecord:
    id: str
    hr_path: str
    lr_path: str | None  # None: LR is the downscale of HR
    hr_size: tuple[int, int]  # after cropping to a multiple of the scale


def check_hr_file(
    path: Path, scale: int, min_lr: int, max_pixels: int | None = None
) -> tuple[str | None, tuple[int, int]]:
    """(reason it is unusable or None, usable HR size) for an HR-only file; decodes it fully (unless over
    ``max_pixels``, default ``images.MAX_PIXELS``)."""
    try:
        image = images.read_image(path, max_pixels)
    except images.ImageReadError as e:
        return str(e).removeprefix(f"{path}: "), (0, 0)
    h, w = image.size
    h, w = h - h % scale, w - w % scale
    if min(h, w) < scale * max(min_lr, 1):
        return f"too small: {image.size[0]}x{image.size[1]} < {scale * max(min_lr, 1)} pixels on a side", (h, w)
    return None, (h, w)


def check_pair_files(
    hr_path: Path, lr_path: Path, scale: int, min_lr: int, max_pixels: int | None = None
) -> tuple[str | None, tuple[int, int]]:
    """(reason the pair is unusable or None, HR size) for paired files; both decoded fully."""
    try:
        hr = images.read_image(hr_path, max_pixels)
        lr = images.read_image(lr_path, max_pixels)
    except images.ImageReadError as e:
        return str(e), (0, 0)
    (h, w), (lh, lw) = hr.size, lr.size
    # benchmark sets keep the HR uncropped: a remainder below the scale is cropped bottom/right (mod-crop)
    if not (0 <= h - scale * lh < scale and 0 <= w - scale * lw < scale):
        return f"HR {h}x{w} is not {scale} x LR {lh}x{lw} ({lr_path})", (h, w)
    h, w = scale * lh, scale * lw
    if min(lh, lw) < max(min_lr, 1):
        return f"too small: LR {lh}x{lw} < {min_lr} pixels on a side", (h, w)
    return None, (h, w)


def _by_stem(folder: Path) -> dict[str, Path]:
    try:
        return images.files_by_stem(folder)
    except images.DuplicateStem as e:
        raise ValueError(str(e)) from None


def lr_stem_match(hr_stems, lr_files: dict[str, Path], scale: int) -> dict[str, Path]:
    """LR files keyed by the HR stem they belong to: the same stem, or the benchmark sets' ``{stem}x{scale}``."""
    hr_stems = set(hr_stems)
    matched: dict[str, Path] = {}
    for stem, path in lr_files.items():
        suffix = f"x{scale}"
        if stem not in hr_stems and stem.endswith(suffix) and stem[: -len(suffix)] in hr_stems:
            stem = stem[: -len(suffix)]
        if stem in matched:
            raise ValueError(f"{matched[stem]} and {path} are both the LR image of {stem!r}; keep one")
        matched[stem] = path
    return matched


def scan_folder(
    hr_folder: str | os.PathLike,
    lr_folder: str | os.PathLike | None,
    scale: int,
    min_lr: int = 0,
    skip_bad_files: bool = False,
    num_threads: int = 8,
    max_pixels: int | None = None,
) -> tuple[list[FolderRecord], list[tuple[str, str]]]:
    """Check every file BEFORE training: (usable records, bad (path, reason)).

    Raises ``BadFilesError`` listing every bad file unless ``skip_bad_files``. 16-bit, grayscale, palette and
    transparent images are usable (converted to 8-bit RGB; transparency composited on white). Files over
    ``max_pixels`` (default ``images.MAX_PIXELS``) and truncated ones are bad files.
    """
    hr_folder = Path(hr_folder)
    if not hr_folder.is_dir():
        raise FileNotFoundError(f"image folder {hr_folder} does not exist (config.data.folder)")
    hr_files = _by_stem(hr_folder)
    bad: list[tuple[str, str]] = []
    jobs: list[tuple[str, Path, Path | None]] = []
    if lr_folder:
        lr_folder = Path(lr_folder)
        if not lr_folder.is_dir():
            raise FileNotFoundError(f"LR folder {lr_folder} does not exist (config.data.lr_folder)")
        lr_files = lr_stem_match(hr_files, _by_stem(lr_folder), scale)
        bad += [(str(p), "no LR image with the same name") for s, p in hr_files.items() if s not in lr_files]
        bad += [(str(p), "no HR image with the same name") for s, p in lr_files.items() if s not in hr_files]
        jobs = [(s, p, lr_files[s]) for s, p in hr_files.items() if s in lr_files]
    else:
        jobs = [(s, p, None) for s, p in hr_files.items()]

    def check(job):
        stem, hr_path, lr_path = job
        if lr_path is None:
            return check_hr_file(hr_path, scale, min_lr, max_pixels)
        return check_pair_files(hr_path, lr_path, scale, min_lr, max_pixels)

    # Pillow releases the GIL while decoding, so threads check a large folder several times faster.
    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        results = list(pool.map(check, jobs))
    records = []
    for (stem, hr_path, lr_path), (reason, size) in zip(jobs, results, strict=True):
        if reason is None:
            records.append(FolderRecord(stem, str(hr_path), None if lr_path is None else str(lr_path), size))
        else:
            bad.append((str(hr_path), reason))
    bad.sort()
    if bad and not skip_bad_files:
        raise BadFilesError(bad, str(hr_folder))
    if not records:
        raise ValueError(f"no usable images in {hr_folder} (suffixes {images.IMAGE_SUFFIXES})")
    return records, bad


class FolderSource:
    """Checked image files; LR is read from ``lr_path`` or made by a Pillow downscale of HR."""

    def __init__(
        self,
        records: Sequence[FolderRecord],
        scale: int,
        downscale: str = "bicubic",
        background: tuple[float, float, float] = (1.0, 1.0, 1.0),
        max_pixels: int | None = None,
    ):
        self.records = list(records)
        self.scale = scale
        self.downscale = downscale
        self.background = background
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def sizes(self) -> list[tuple[int, int]]:
        return [r.hr_size for r in self.records]

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        hr = to_rgb_uint8(images.read_image(record.hr_path, self.max_pixels), self.background)
        if record.lr_path is None:
            hr, lr = make_pair(hr, self.scale, self.downscale)
        else:
            lr = to_rgb_uint8(images.read_image(record.lr_path, self.max_pixels), self.background)
            hr = hr[: self.scale * lr.shape[0], : self.scale * lr.shape[1]]
        return {"hr": hr, "lr": lr, "id": record.id}


def holdout(records: Sequence[FolderRecord], split: str, fraction: float) -> list[FolderRecord]:
    """Deterministic hold-out of a single folder: evenly spaced files (sorted by name) form validation/test."""
    n = len(records)
    if fraction <= 0 or n < 2:
        return list(records) if split == "train" else []
    n_val = min(n - 1, max(1, round(n * fraction)))
    held = {int(i) for i in np.linspace(0, n - 1, n_val).round()}
    if split == "train":
        return [r for i, r in enumerate(records) if i not in held]
    return [r for i, r in enumerate(records) if i in held]


# ----------------------------------------------------------------------------------------------- TFDS


class TfdsSource:
    """A prepared TFDS data source (ArrayRecord) with features ``hr``, ``lr`` [, ``id``]."""

    def __init__(self, data_source, name: str, index_ids: bool = False):
        self._source = data_source
        self.name = name
        # records without an id are named "<name>-<index>", or by the zero-padded index alone (file-stem style)
        self._digits = len(str(max(len(data_source) - 1, 0))) if index_ids else 0

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        record = self._source[index]
        ident = record.get("id", f"{index:0{self._digits}d}" if self._digits else f"{self.name}-{index}")
        if isinstance(ident, bytes | np.bytes_):
            ident = ident.decode()
        return {"hr": np.asarray(record["hr"], np.uint8), "lr": np.asarray(record["lr"], np.uint8), "id": str(ident)}


def tfds_with_builders():
    """``tensorflow_datasets`` with this project's builders (pokemon) registered: the one place that registers them,
    imported only when a TFDS data set is used."""
    import tensorflow_datasets as tfds

    import jsr.data.pokemon  # noqa: F401  (registers the builder)

    return tfds


def _tfds_split(name: str, split: str, data_dir: str | None):
    return tfds_with_builders().data_source(name, split=split, data_dir=data_dir or None, download=False)


def pokemon_source(split: str, data_dir: str | None = None, downscale: str = "bicubic") -> TfdsSource:
    """The prepared ``pokemon/<downscale>`` TFDS data set (``python -m jsr.data.prepare --dataset=pokemon``)."""
    name = f"pokemon/{downscale}"
    try:
        return TfdsSource(_tfds_split(name, check_split(split), data_dir), name)
    except Exception as e:  # tfds raises AssertionError / FileNotFoundError / DatasetNotFoundError
        raise FileNotFoundError(
            f"{name} is not prepared in {data_dir or '~/tensorflow_datasets'} ({type(e).__name__}: {e}). "
            f"Prepare it once: python -m jsr.data.prepare --dataset=pokemon --downscale={downscale} "
            f"{'--data-dir=' + data_dir + ' ' if data_dir else ''}[--manual-dir=DIR_OF_PNGS]"
        ) from e


DIV2K_NAME = "div2k/bicubic_x4"


def div2k_source(split: str, data_dir: str | None = None) -> TfdsSource:
    """TFDS ``div2k/bicubic_x4`` prepared as ArrayRecord; it has no test split, so test reads validation."""
    tfds_split = "validation" if check_split(split) == "test" else split
    try:
        return TfdsSource(_tfds_split(DIV2K_NAME, tfds_split, data_dir), DIV2K_NAME)
    except Exception as e:
        raise FileNotFoundError(
            f"{DIV2K_NAME} is not prepared (as ArrayRecord) in {data_dir or '~/tensorflow_datasets'} "
            f"({type(e).__name__}: {e}). Preparing it needs TensorFlow: pip install 'jsr[div2k]', then "
            f"python -m jsr.data.prepare --dataset=div2k{' --data-dir=' + data_dir if data_dir else ''}"
        ) from e
