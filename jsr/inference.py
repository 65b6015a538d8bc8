"""Generator inference on images of any size: shape buckets and overlapping tiles, exact and bounded.

Every piece the network sees is a zero-padded canvas of a FIXED shape plus a validity mask; the generator
zeroes each conv's input outside the mask, so a padded piece computes exactly what the network computes on
the image itself (see ``jsr.models.srresnet._MaskedConv``). Hence:
- one jit compile per canvas shape, not per image (edge tiles and small images are padded, not reshaped);
- tiles overlapping by at least the receptive radius stitch to the untiled result up to float rounding;
- memory is bounded by the tile, not the image (a 2048x2048 input never holds whole-image activations).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jsr import parallel
from jsr.images import to_uint8
from jsr.models import Generator

DEFAULT_TILE = 256  # LR pixels; images whose sides fit in one tile window run whole
DEFAULT_BUCKET = 64  # whole images are padded up to a multiple of this, bounding the number of compiles


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class Upscaler:
    """``Upscaler(module, variables)(rgb)`` -> SR image, for float RGB in [0, 1] of shape (H, W, 3).

    Args:
      module, variables: a ``Generator`` and its variables (``jsr.checkpoints.load_model``).
      tile: core tile side in LR pixels; None = ``DEFAULT_TILE`` and tile only images that do not fit one window.
      overlap: context around each tile in LR pixels; None = the generator's receptive radius (exact stitching).
      bucket: whole images are zero-padded to a multiple of this (fewer compiles, exact results).
      force_tiles: tile even images that fit one window (what an explicit ``--tile`` means).
      mesh: devices to spread tiles / images over (default: all local devices).
    """

    def __init__(
        self,
        module: Generator,
        variables: Any,
        tile: int | None = None,
        overlap: int | None = None,
        bucket: int = DEFAULT_BUCKET,
        force_tiles: bool = False,
        mesh=None,
    ):
        if not isinstance(module, Generator):
            raise TypeError(f"Upscaler needs a Generator, got {type(module).__name__}")
        self.module = module
        self.scale = module.scale
        self.tile = int(tile or DEFAULT_TILE)
        self.overlap = module.receptive_radius if overlap is None else int(overlap)
        if self.tile < 1 or self.overlap < 0:
            raise ValueError(f"tile must be >= 1 and overlap >= 0, got tile={tile} overlap={overlap}")
        self.bucket = bucket
        self.force_tiles = force_tiles
        self.mesh = mesh or parallel.make_mesh(jax.local_devices())
        self.num_devices = self.mesh.devices.size
        self.variables = parallel.put_replicated(variables, self.mesh)
        self.compiled_shapes: set[tuple[int, ...]] = set()

        def run(variables, x, mask):
            sr = module.apply(variables, x * 2.0 - 1.0, valid_mask=mask)
            return jnp.clip((sr + 1.0) / 2.0, 0.0, 1.0)

        self._run_jit = jax.jit(run)

    def set_variables(self, variables: Any) -> None:
        """New weights for the same module (e.g. during training): no recompilation."""
        self.variables = parallel.put_replicated(variables, self.mesh)

    @property
    def window(self) -> int:
        return self.tile + 2 * self.overlap

    @property
    def exact(self) -> bool:
        """Whether tiles stitch exactly (overlap covers the receptive field)."""
        return self.overlap >= self.module.receptive_radius

    def _run(self, canvases: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Run a batch of canvases (B, h, w, 3) in [0, 1]; B is padded to a multiple of the device count."""
        b = canvases.shape[0]
        padded = _round_up(b, self.num_devices)
        if padded != b:
            canvases = np.concatenate([canvases, np.zeros((padded - b, *canvases.shape[1:]), canvases.dtype)])
            masks = np.concatenate([masks, np.zeros((padded - b, *masks.shape[1:]), masks.dtype)])
        self.compiled_shapes.add(canvases.shape)
        x, m = parallel.put_batch((canvases, masks), self.mesh) if self.num_devices > 1 else (canvases, masks)
        return np.asarray(self._run_jit(self.variables, x, m))[:b]

    def fits_whole(self, h: int, w: int) -> bool:
        return not self.force_tiles and h <= self.window and w <= self.window

    def bucket_shape(self, h: int, w: int) -> tuple[int, int]:
        return _round_up(h, self.bucket), _round_up(w, self.bucket)

    def upscale_many(self, images: Iterable[np.ndarray], batch_size: int | None = None) -> list[np.ndarray]:
        """SR of several images: whole images batched by bucket shape, large ones tiled one by one."""
        images = list(images)
        outputs: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            h, w = image.shape[:2]
            if self.fits_whole(h, w):
                groups.setdefault(self.bucket_shape(h, w), []).append(i)
            else:
                outputs[i] = self.upscale(image)
        batch_size = batch_size or self.num_devices
        for (bh, bw), members in groups.items():
            for start in range(0, len(members), batch_size):
                chunk = members[start : start + batch_size]
                canvases = np.zeros((len(chunk), bh, bw, 3), np.float32)
                masks = np.zeros((len(chunk), bh, bw, 1), np.float32)
                for k, i in enumerate(chunk):
                    h, w = images[i].shape[:2]
                    canvases[k, :h, :w] = images[i]
                    masks[k, :h, :w] = 1.0
                result = self._run(canvases, masks)
                for k, i in enumerate(chunk):
                    h, w = images[i].shape[:2]
                    outputs[i] = result[k, : h * self.scale, : w * self.scale]
        return outputs  # type: ignore[return-value]

    def upscale(
        self, image: np.ndarray, out_dtype: Any = np.float32, progress: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        """SR of one (H, W, 3) float image in [0, 1]; ``out_dtype=np.uint8`` quantises tile by tile (less memory).

        ``progress(done, total)`` is called after each batch of tiles.
        """
        image = np.asarray(image, np.float32)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
        h, w = image.shape[:2]
        s = self.scale
        if self.fits_whole(h, w):
            out = self.upscale_many([image])[0]
            return to_uint8(out) if out_dtype == np.uint8 else out
        t, o = self.tile, self.overlap
        ny, nx = math.ceil(h / t), math.ceil(w / t)
        # the canvas holds every window: o pixels of zeros before the image, enough after the last tile
        canvas = np.zeros((ny * t + 2 * o, nx * t + 2 * o, 3), np.float32)
        canvas[o : o + h, o : o + w] = image
        mask = np.zeros((*canvas.shape[:2], 1), np.float32)
        mask[o : o + h, o : o + w] = 1.0
        out = np.zeros((h * s, w * s, 3), out_dtype)
        tiles = [(ty, tx) for ty in range(ny) for tx in range(nx)]
        batch = self.num_devices
        win = self.window
        for start in range(0, len(tiles), batch):
            chunk = tiles[start : start + batch]
            xs = np.stack([canvas[ty * t : ty * t + win, tx * t : tx * t + win] for ty, tx in chunk])
            ms = np.stack([mask[ty * t : ty * t + win, tx * t : tx * t + win] for ty, tx in chunk])
            result = self._run(xs, ms)
            for k, (ty, tx) in enumerate(chunk):
                y0, x0 = ty * t, tx * t
                ch, cw = min(t, h - y0), min(t, w - x0)
                core = result[k, o * s : (o + ch) * s, o * s : (o + cw) * s]
                out[y0 * s : (y0 + ch) * s, x0 * s : (x0 + cw) * s] = to_uint8(core) if out_dtype == np.uint8 else core
            if progress:
                progress(min(start + batch, len(tiles)), len(tiles))
        return out
