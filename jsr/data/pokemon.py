"""TFDS builder ``pokemon``: the official Pokemon artwork as (LR 64x64, HR 256x256) pairs, prepared without TensorFlow.

Preparation follows the seed study: RGBA composited on WHITE, Pillow bicubic resize to 256x256 (HR), then a Pillow
downscale x4 to 64x64 (LR; bicubic in config ``pokemon/bicubic``, Lanczos - what the seed's code ran - in
``pokemon/lanczos``). Split by id, deterministic: ``id % 5`` in {0, 1, 2} train, 3 validation, 4 test (60/20/20).

The artwork is copyrighted: it is downloaded by the user (PokeAPI sprites) or read from ``manual_dir``, never shipped.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jsr import images

URL = "https://raw.githubusercontent.com/PokeAPI/sprites/master/sprites/pokemon/other/official-artwork/{id}.png"
NUM_IDS = 809  # Generations 1-7 (the seed used 801 of these)
HR_SIZE = 256
SCALE = 4
WHITE = (1.0, 1.0, 1.0)
SPLIT_OF_BUCKET = {0: "train", 1: "train", 2: "train", 3: "validation", 4: "test"}


def stable_bucket(ident: str, buckets: int) -> int:
    """Numeric ids by value, other names by CRC32: the same bucket on every machine and Python."""
    return int(ident) % buckets if ident.isdigit() else zlib.crc32(ident.encode()) % buckets


def split_of(ident: str) -> str:
    return SPLIT_OF_BUCKET[stable_bucket(ident, 5)]


def prepare_pair(path: str | Path, downscale: str) -> tuple[np.ndarray, np.ndarray]:
    """One artwork file -> (HR uint8 256x256x3, LR uint8 64x64x3) exactly as the data set stores them."""
    image = images.read_image(path)
    rgb = image.rgb if image.alpha is None else images.composite(image.rgb, image.alpha, WHITE)
    hr = images.resize(images.to_uint8(rgb), (HR_SIZE, HR_SIZE), "bicubic")
    return hr, images.resize(hr, (HR_SIZE // SCALE, HR_SIZE // SCALE), downscale)


class PokemonConfig(tfds.core.BuilderConfig):
    def __init__(self, *, downscale: str, **kwargs):
        super().__init__(**kwargs)
        self.downscale = downscale


class Pokemon(tfds.core.GeneratorBasedBuilder):
    """Official Pokemon artwork (ids 1..809) as super-resolution pairs."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "White background, 256x256 HR, 64x64 LR, split by id."}
    BUILDER_CONFIGS = [
        PokemonConfig(name="bicubic", downscale="bicubic", description="LR = Pillow bicubic downscale x4 of HR."),
        PokemonConfig(name="lanczos", downscale="lanczos", description="LR = Pillow Lanczos downscale x4 (seed code)."),
    ]
    DEFAULT_CONFIG_NAME = "bicubic"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Offline: put the official-artwork PNGs ({id}.png, 475x475 RGBA, from PokeAPI/sprites "
        "sprites/pokemon/other/official-artwork) in manual_dir. Any *.png there is used; its id is the file stem."
    )

    def __init__(self, *, file_format: str | None = "array_record", **kwargs):
        # ArrayRecord is the format that is written and read without TensorFlow.
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        lr = HR_SIZE // SCALE
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "hr": tfds.features.Image(shape=(HR_SIZE, HR_SIZE, 3), encoding_format="png"),
                    "lr": tfds.features.Image(shape=(lr, lr, 3), encoding_format="png"),
                    "id": tfds.features.Text(),
                }
            ),
            homepage="https://github.com/PokeAPI/sprites",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        files = self._manual_files(dl_manager)
        if files is None:
            urls = {str(i): URL.format(id=i) for i in range(1, NUM_IDS + 1)}
            files = {ident: Path(path) for ident, path in dl_manager.download(urls).items()}
        by_split: dict[str, list[tuple[str, Path]]] = {name: [] for name in ("train", "validation", "test")}
        for ident, path in sorted(files.items()):
            by_split[split_of(ident)].append((ident, path))
        return {name: self._generate_examples(items) for name, items in by_split.items()}

    @staticmethod
    def _manual_files(dl_manager) -> dict[str, Path] | None:
        """``{id: path}`` of the PNGs in manual_dir, or None when there is no (non-empty) manual_dir."""
        try:
            folder = Path(dl_manager.manual_dir)
        except AssertionError:  # no manual_dir, or it is missing/empty: download instead
            return None
        files = {p.stem: p for p in sorted(folder.glob("*.png"))}
        if not files:
            raise FileNotFoundError(
                f"manual_dir {folder} holds no *.png files; see {Pokemon.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        return files

    def _generate_examples(self, items: Iterable[tuple[str, Path]]):
        for ident, path in items:
            hr, lr = prepare_pair(path, self.builder_config.downscale)
            # PIL images: TFDS encodes them to PNG without TensorFlow (numpy arrays would need TF).
            yield ident, {"hr": Image.fromarray(hr), "lr": Image.fromarray(lr), "id": ident}
