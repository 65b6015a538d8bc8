"""Data: sources (Pokemon TFDS builder, DIV2K, image folders, bundled samples), Grain pipeline, on-device augmentation.

What the trainer calls (``cfg`` is ``config.data``, see ``default_data_config`` for every field)::

    source = make_source(cfg, "train")                      # len(), source[i] -> {"hr", "lr", "id"} uint8
    it = make_train_iterator(cfg, batch_size, seed, mesh)   # next(it) -> {"hr", "lr"} uint8, sharded on 'data'
    state = it.get_state(); it.set_state(state)             # JSON-serialisable; resume sees the same batches
    for batch in make_eval_batches(cfg, batch_size, mesh):  # {"hr", "lr", "mask"}, every validation record once
        ...
    # inside the jitted step (images float32 in [0, 1], fill in the same units):
    hr, lr = augment.augment_batch(key, to_unit(batch["hr"]), to_unit(batch["lr"]), params,
                                   scale=cfg.scale, mode=cfg.augment.mode, fill=augment_fill(cfg.augment))
    # with params = augment_params(cfg.augment, per-step batch size) (per-example arrays a tuner may change).

The TFDS builder ``pokemon`` is registered where it is used (``sources.pokemon_source``, ``prepare``).
"""

from __future__ import annotations

import logging
import os

import ml_collections
import numpy as np
from jax.sharding import Mesh

from jsr import images
from jsr.config import default_augment_config, default_data_config
from jsr.data import augment, degrade, pipeline, sources
from jsr.data.augment import augment_batch, make_params, to_unit
from jsr.data.pipeline import DeviceIterator

__all__ = [
    "DeviceIterator",
    "augment",
    "augment_batch",
    "augment_fill",
    "augment_params",
    "degradation",
    "default_augment_config",
    "default_data_config",
    "make_eval_batches",
    "make_params",
    "make_source",
    "make_train_iterator",
    "to_unit",
]

SOURCES = ("samples", "pokemon", "div2k", "folder")
log = logging.getLogger(__name__)


def degradation(cfg: ml_collections.ConfigDict, tuned=()) -> dict | None:
    """{param: value} of the on-device degradation (``jsr.data.degrade``), or None when the pipeline's LR is used.

    A degradation parameter a tuner names in ``tuned`` turns it on (the tuner's values replace these)."""
    if not cfg.degrade.enabled and not set(tuned) & set(degrade.PARAMS):
        return None
    values = {name: float(cfg.degrade[name]) for name in degrade.PARAMS}
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"config.data.degrade.{name} is {value}; it must be 0 or more")
    return values


def _folder_split(cfg, split: str, min_lr: int):
    scale, skip = int(cfg.scale), bool(cfg.skip_bad_files)
    limit = {"max_pixels": int(cfg.max_image_pixels or images.MAX_PIXELS)}
    if split != "train" and cfg.val_folder:
        records, bad = sources.scan_folder(cfg.val_folder, cfg.val_lr_folder or None, scale, min_lr, skip, **limit)
    else:
        if not cfg.folder:
            raise ValueError("config.data.source='folder' needs config.data.folder (a folder of HR images)")
        records, bad = sources.scan_folder(cfg.folder, cfg.lr_folder or None, scale, min_lr, skip, **limit)
        if not cfg.val_folder:
            records = sources.holdout(records, split, float(cfg.val_fraction))
            if not records:
                raise ValueError(f"no {split} images: set config.data.val_folder or a val_fraction > 0")
    for path, reason in bad:
        log.warning("skipping %s: %s", path, reason)
    background = images.parse_colour(cfg.background)
    return sources.FolderSource(records, scale, cfg.downscale, background, **limit)


def make_source(cfg: ml_collections.ConfigDict, split: str = "train", patch_size: int | None = None):
    """The random-access source of ``split`` ('train' | 'validation' | 'test') for ``cfg.source``.

    ``patch_size`` (LR; default: ``cfg.patch_size`` for train, ``cfg.eval_patch_size`` otherwise) is the size every
    image must reach; folders report every file below it (and every unreadable/mismatched file) before returning.
    """
    sources.check_split(split)
    if patch_size is None:
        patch_size = int(cfg.patch_size if split == "train" else cfg.eval_patch_size or 0)
    kind, scale = cfg.source, int(cfg.scale)
    if kind == "samples":
        source = sources.samples_source(split, scale, cfg.downscale)
    elif kind == "pokemon":
        from jsr.data import pokemon  # TFDS: imported only for this source

        if scale != pokemon.SCALE:
            raise ValueError(f"the pokemon data set is prepared at scale {pokemon.SCALE}; set config.data.scale=4")
        source = sources.pokemon_source(split, cfg.data_dir or None, cfg.downscale)
    elif kind == "div2k":
        if scale != 4:
            raise ValueError("div2k/bicubic_x4 is scale 4; set config.data.scale=4")
        source = sources.div2k_source(split, cfg.data_dir or None)
    elif kind == "folder":
        return _folder_split(cfg, split, patch_size)
    else:
        raise ValueError(f"unknown config.data.source {kind!r}; choose from {SOURCES}")
    check_source_fits(source, patch_size, scale)
    return source


def check_source_fits(source, patch_size: int, scale: int) -> None:
    """Fail before training when images cannot give a ``patch_size`` crop (all records if sizes are known)."""
    if not patch_size or len(source) == 0:
        return
    if hasattr(source, "sizes"):
        small = [source[i]["id"] for i, (h, w) in enumerate(source.sizes()) if min(h, w) < scale * patch_size]
        if small:
            raise ValueError(
                f"images {small} are smaller than the crop (LR {patch_size}); lower config.data.patch_size"
            )
    else:  # TFDS: sizes are only known by decoding; the first record catches a uniform data set like Pokemon
        pipeline.check_fits(source[0], patch_size, scale)


def host_threads(cfg: ml_collections.ConfigDict) -> int:
    """``cfg.num_threads``, or for 0 min(8, CPU cores): on 2 cores, 2 threads fed a free step at 151 batches/s of 64
    crops, 8 threads at 112 (benchmarks/trainer_loop.py)."""
    return int(cfg.num_threads) or min(8, os.cpu_count() or 1)


def make_train_iterator(
    cfg: ml_collections.ConfigDict, batch_size: int, seed: int, mesh: Mesh, source=None
) -> DeviceIterator:
    """Infinite training batches ``{"hr", "lr"}`` (uint8, global ``batch_size``, sharded over ``mesh``)."""
    source = make_source(cfg, "train") if source is None else source
    return pipeline.make_device_iterator(
        source,
        mesh,
        global_batch_size=batch_size,
        seed=seed,
        patch_size=int(cfg.patch_size or 0),
        scale=int(cfg.scale),
        num_threads=host_threads(cfg),
        prefetch_batches=int(cfg.prefetch),
        num_workers=int(cfg.num_workers),
        device_prefetch=int(cfg.device_prefetch),
    )


def make_eval_batches(
    cfg: ml_collections.ConfigDict,
    batch_size: int,
    mesh: Mesh,
    split: str = "validation",
    source=None,
    with_ids: bool = False,
):
    """Every record of ``split`` once: ``{"hr", "lr", "mask"}`` (or ``(batch, ids)``), padded, sharded.

    Weight per-example metrics by ``mask``. A new generator each call (re-iterable per evaluation).
    """
    patch = int(cfg.eval_patch_size or 0)
    source = make_source(cfg, split, patch) if source is None else source
    return pipeline.eval_batches(
        source,
        mesh,
        global_batch_size=batch_size,
        patch_size=patch,
        scale=int(cfg.scale),
        num_threads=host_threads(cfg),
        with_ids=with_ids,
    )


def augment_params(aug_cfg: ml_collections.ConfigDict, batch_size: int) -> dict:
    """Per-example magnitude arrays from ``config.data.augment`` (all zero when ``enabled`` is False)."""
    if not aug_cfg.enabled:
        return augment.zero_params(batch_size)
    values = {name: aug_cfg[name] for name in augment.PARAM_SHAPES if name in aug_cfg}
    return augment.make_params(batch_size, **values)


def augment_fill(aug_cfg: ml_collections.ConfigDict) -> np.ndarray:
    """The fill colour as float32 RGB in [0, 1] (the augmentation's units)."""
    return np.asarray(images.parse_colour(str(aug_cfg.fill)), np.float32)
