"""Host data pipeline throughput: batches/s of Pokemon-size (256x256 HR, 64x64 LR) whole images at batch 24.

    python benchmarks/data_pipeline.py [--data_dir=DIR_WITH_PREPARED_POKEMON] [--batches=50] [--threads=8]

Without --data_dir it prepares a synthetic stand-in (smooth RGBA 475x475 artwork, no network) through the real
TFDS builder in a temporary folder, so the figure includes ArrayRecord reads and PNG decoding. It reports the host
pipeline alone (Grain: read, decode, shuffle, batch) and with placement on the devices (DeviceIterator).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_artwork(folder: Path, count: int, seed: int = 0) -> None:
    """Smooth colour fields with a transparent surround: compresses like artwork, unlike noise."""
    rng = np.random.default_rng(seed)
    for i in range(1, count + 1):
        coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        rgb = np.asarray(Image.fromarray(coarse).resize((475, 475), Image.Resampling.BICUBIC))
        yy, xx = np.mgrid[:475, :475]
        alpha = (((yy - 237) ** 2 + (xx - 237) ** 2) < rng.integers(120, 220) ** 2).astype(np.uint8) * 255
        Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(folder / f"{i}.png")


def time_iterator(it, batches: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="TFDS data_dir holding a prepared pokemon/bicubic")
    parser.add_argument("--images", type=int, default=120, help="synthetic images to prepare (no --data_dir)")
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()

    import jax

    import jsr.data as data
    from jsr.data import pipeline, prepare
    from jsr.parallel import make_mesh

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            manual = Path(tmp, "manual")
            manual.mkdir()
            synthetic_artwork(manual, args.images)
            data_dir = str(Path(tmp, "tfds"))
            prepare.prepare_pokemon(data_dir, str(manual))
        cfg = data.default_data_config()
        cfg.update(source="pokemon", data_dir=data_dir, patch_size=0, num_threads=args.threads)
        cfg.update(num_workers=args.workers)
        source = data.make_source(cfg, "train")
        host = pipeline.train_dataset(
            source,
            batch_size=args.batch,
            seed=0,
            patch_size=0,
            scale=4,
            num_threads=args.threads,
            num_workers=args.workers,
        )
        host_rate = time_iterator(iter(host), args.batches)
        mesh = make_mesh(jax.devices()[:1]) if args.batch % jax.device_count() else make_mesh()
        device_it = data.make_train_iterator(cfg, args.batch, seed=0, mesh=mesh, source=source)
        device_rate = time_iterator(device_it, args.batches)
        device_it.close()
    print(
        f"pokemon-size 256/64 whole images, batch {args.batch}, {len(source)} train records, "
        f"{args.threads} threads, {args.workers} workers, {os.cpu_count()} CPUs, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s)"
    )
    print(f"host pipeline: {host_rate:.1f} batches/s ({host_rate * args.batch:.0f} images/s)")
    print(f"with device placement: {device_rate:.1f} batches/s")


if __name__ == "__main__":
    main()
