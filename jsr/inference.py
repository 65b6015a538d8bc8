"""Generator inference on images of any size: shape buckets and overlapping tiles, exact and bounded.

Every piece the network sees is a zero-padded canvas of a FIXED shape plus a validity mask; the generator
zeroes each conv's input outside the mask, so a padded piece computes exactly what the network computes on
the image itself (see ``jsr.models.srresnet._MaskedConv``). Hence:
- one jit compile per canvas shape, not per image (edge tiles and small images are padded, not reshaped);
- tiles overlapping by at least the receptive radius stitch to the untiled result up to float rounding;
- memory is bounded by the tile, not the image (a 2048x2048 input never holds whole-image activations).

What crosses the host-device link is kept small, and overlapped with the work (it is what bounds a GPU here):
the mask is built on the device from each canvas's valid rectangle (4 integers, not a mask image); a tile's
output is cropped to its core on the device, and quantised there when uint8 is asked for (4x fewer bytes back);
the next batch of pieces is dispatched before the previous one is copied back and stitched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jsr import archs, parallel, program_cache
from jsr.errors import UserError
from jsr.ops.conv import CONV_PATHS

DEFAULT_TILE = 256  # LR pixels; images whose sides fit in one tile window run whole
DEFAULT_BUCKET = 64  # whole images are padded up to a multiple of this, bounding the number of compiles
INEXACT_OVERLAP = 16  # LR context per tile side for networks with global operations (their tiles are approximate)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def valid_mask(bounds: jax.Array, height: int, width: int) -> jax.Array:
    """(B, height, width, 1) float mask, 1 inside each canvas's rectangle ``bounds[b] = (y0, y1, x0, x1)``."""
    ys = jnp.arange(height)[None, :, None]
    xs = jnp.arange(width)[None, None, :]
    y0, y1, x0, x1 = (bounds[:, k, None, None] for k in range(4))
    inside = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    return inside[..., None].astype(jnp.float32)


def device_to_uint8(x: jax.Array) -> jax.Array:
    """[0, 1] floats -> uint8, rounding to nearest (even on ties): ``jsr.images.to_uint8`` on the device."""
    return jnp.clip(jnp.rint(x * 255.0), 0, 255).astype(jnp.uint8)


class Upscaler:
    """``Upscaler(module, variables)(rgb)`` -> SR image, for float RGB in [0, 1] of shape (H, W, 3).

    Args:
      module, variables: a ``Generator`` and its variables (``jsr.checkpoints.load_model``).
      tile: core tile side in LR pixels; None = ``DEFAULT_TILE`` and tile only images that do not fit one window.
      overlap: context around each tile in LR pixels; None = the generator's receptive radius (exact stitching).
      bucket: whole images are zero-padded to a multiple of this (fewer compiles, exact results).
      force_tiles: tile even images that fit one window (what an explicit ``--tile`` means).
      mesh: devices to spread tiles / images over (default: all local devices).
      conv: the convolution path to run the generator with ('xla', 'fast', 'winograd'; the parameters are the
        same); 'auto' = 'winograd' for float32 on CPUs where the architecture's ``cpu_winograd`` says it pays (3x3
        convs by Winograd F(4x4, 3x3), outputs equal to ~1e-5), else the module's own.
      tile_batch: tiles per call, a multiple of the device count (default: one per device: more per call made a
        GPU slower, fewer calls leaving less to overlap).
    """

    def __init__(
        self,
        module: Any,
        variables: Any,
        tile: int | None = None,
        overlap: int | None = None,
        bucket: int = DEFAULT_BUCKET,
        force_tiles: bool = False,
        mesh=None,
        tile_batch: int | None = None,
        conv: str = "auto",
    ):
        arch = archs.architecture_of(module)
        if arch.role != "generator":
            raise TypeError(f"Upscaler needs a generator, got a {arch.role} ({arch.name})")
        if arch.colour != "rgb":
            raise UserError(
                f"{arch.name} sees only luma (Y) and jsr's upscaling and evaluation run RGB networks only: its "
                "converted weights load (jsr.checkpoints.load_model) for use from Python"
            )
        self.mesh = mesh or parallel.make_mesh(jax.local_devices())
        if conv == "auto":
            on_cpu = self.mesh.devices.flat[0].platform == "cpu"
            conv = "winograd" if on_cpu and arch.winograd_pays(module.dtype) else module.conv
        if conv not in CONV_PATHS:
            raise ValueError(f"conv={conv!r}: choose 'auto' or one of {CONV_PATHS}")
        module = module.clone(conv=conv)
        self.module = module
        self.scale = module.scale
        # networks that pixel-unshuffle their input (RRDBNet x2 / x1) need tiles and context on their grid
        align = int(getattr(module, "alignment", 1))
        self.tile = _round_up(int(tile or DEFAULT_TILE), align)
        self.radius = module.receptive_radius if arch.exact_tiling else None  # None: tiles are never exact
        self.overlap = _round_up((self.radius or INEXACT_OVERLAP) if overlap is None else int(overlap), align)
        if self.tile < 1 or self.overlap < 0:
            raise ValueError(f"tile must be >= 1 and overlap >= 0, got tile={tile} overlap={overlap}")
        self.bucket = _round_up(bucket, align)
        self.force_tiles = force_tiles
        self.num_devices = self.mesh.devices.size
        tile_batch = self.num_devices if tile_batch is None else tile_batch
        if tile_batch < 1:
            raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")
        self.tile_batch = _round_up(int(tile_batch), self.num_devices)
        self.variables = parallel.put_replicated(variables, self.mesh)
        self.compiled_shapes: set[tuple[int, ...]] = set()

        self._programs: dict[tuple, Callable] = {}  # (crop, as_uint8) -> the jitted network

    def set_variables(self, variables: Any) -> None:
        """New weights for the same module (e.g. during training): no recompilation."""
        self.variables = parallel.put_replicated(variables, self.mesh)

    @property
    def window(self) -> int:
        return self.tile + 2 * self.overlap

    @property
    def exact(self) -> bool:
        """Whether tiles stitch exactly (overlap covers the receptive field)."""
        return self.radius is not None and self.overlap >= self.radius

    def _dispatch(
        self, canvases: np.ndarray, bounds: np.ndarray, crop=None, as_uint8: bool = False, pad_to: int = 1
    ) -> jax.Array:
        """Start the network on canvases (B, h, w, 3) in [0, 1] with valid rectangles (B, 4); returns at once.

        B is padded with empty canvases to ``pad_to`` and a multiple of the device count; the result's copy to the
        host starts as soon as it is ready.
        """
        b = canvases.shape[0]
        padded = _round_up(max(b, pad_to), self.num_devices)
        if padded != b:
            canvases = np.concatenate([canvases, np.zeros((padded - b, *canvases.shape[1:]), canvases.dtype)])
            bounds = np.concatenate([bounds, np.zeros((padded - b, 4), bounds.dtype)])
        self.compiled_shapes.add(canvases.shape)
        if self.num_devices > 1:
            canvases, bounds = parallel.put_batch((canvases, bounds), self.mesh)
        result = self._program(crop, as_uint8)(self.variables, canvases, bounds)
        result.copy_to_host_async()
        return result

    def _program(self, crop: tuple[int, int] | None, as_uint8: bool) -> Callable:
        """The network on canvases, cropped to ``crop`` (start, size) and quantised if asked, jitted; its compiled
        programs are kept on disk (``jsr.program_cache``, keyed by the module's fields)."""
        if (crop, as_uint8) not in self._programs:
            module = self.module

            def upscale_canvases(variables, canvases, bounds):
                mask = valid_mask(bounds, *canvases.shape[1:3])
                sr = module.apply(variables, archs.to_model_range(module, canvases), valid_mask=mask)
                sr = jnp.clip(archs.from_model_range(module, sr), 0.0, 1.0)
                if crop is not None:  # the square core every piece keeps
                    sr = sr[:, crop[0] : crop[0] + crop[1], crop[0] : crop[0] + crop[1]]
                return device_to_uint8(sr) if as_uint8 else sr

            key = f"Upscaler {program_cache.module_key(module)} crop={crop} uint8={as_uint8}"
            self._programs[crop, as_uint8] = program_cache.jit(upscale_canvases, key, modules=(module,))
        return self._programs[crop, as_uint8]

    @staticmethod
    def _pipelined(calls: Iterable[tuple[Any, jax.Array]]) -> Iterator[tuple[Any, np.ndarray]]:
        """(key, host result) per call of the lazy ``calls``: each is dispatched (the generator advanced) before
        the previous result is waited for."""
        pending = None
        for started in calls:
            if pending is not None:
                yield pending[0], np.asarray(pending[1])
            pending = started
        if pending is not None:
            yield pending[0], np.asarray(pending[1])

    def fits_whole(self, h: int, w: int) -> bool:
        # networks with global operations run whole (exact) unless tiles are asked for
        return not self.force_tiles and (self.radius is None or (h <= self.window and w <= self.window))

    def bucket_shape(self, h: int, w: int) -> tuple[int, int]:
        return _round_up(h, self.bucket), _round_up(w, self.bucket)

    def canvas_shape(self, h: int, w: int) -> tuple[int, int]:
        """The (height, width) the network runs on for an h x w image: its bucket, or the tile window."""
        return self.bucket_shape(h, w) if self.fits_whole(h, w) else (self.window, self.window)

    def upscale_many(
        self, images: Iterable[np.ndarray], batch_size: int | None = None, out_dtype: Any = np.float32
    ) -> list[np.ndarray]:
        """SR of several images: whole images batched by bucket shape, large ones tiled one by one.

        ``out_dtype=np.uint8`` quantises on the device (as ``jsr.images.to_uint8`` would on the host).
        """
        images = [_as_rgb(image) for image in images]
        as_uint8 = _wants_uint8(out_dtype)
        outputs: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            h, w = image.shape[:2]
            if self.fits_whole(h, w):
                groups.setdefault(self.bucket_shape(h, w), []).append(i)
            else:
                outputs[i] = self.upscale(image, out_dtype=out_dtype)
        batch_size = batch_size or self.num_devices

        def dispatch(bh: int, bw: int, chunk: list[int]) -> jax.Array:
            canvases = np.zeros((len(chunk), bh, bw, 3), np.float32)
            bounds = np.zeros((len(chunk), 4), np.int32)
            for k, i in enumerate(chunk):
                h, w = images[i].shape[:2]
                canvases[k, :h, :w] = images[i]
                bounds[k] = (0, h, 0, w)
            return self._dispatch(canvases, bounds, as_uint8=as_uint8)

        calls = (
            (members[start : start + batch_size], dispatch(bh, bw, members[start : start + batch_size]))
            for (bh, bw), members in groups.items()
            for start in range(0, len(members), batch_size)
        )
        for chunk, result in self._pipelined(calls):
            for k, i in enumerate(chunk):
                h, w = images[i].shape[:2]
                outputs[i] = result[k, : h * self.scale, : w * self.scale].copy()  # not a view pinning the batch
        return outputs  # type: ignore[return-value]

    def upscale(
        self, image: np.ndarray, out_dtype: Any = np.float32, progress: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        """SR of one (H, W, 3) float image in [0, 1]; ``out_dtype=np.uint8`` quantises on the device (less memory,
        4x fewer bytes copied back). ``progress(done, total)`` is called after each batch of tiles."""
        image = _as_rgb(image)
        h, w = image.shape[:2]
        s = self.scale
        if self.fits_whole(h, w):
            return self.upscale_many([image], out_dtype=out_dtype)[0]
        as_uint8 = _wants_uint8(out_dtype)
        t, o, win = self.tile, self.overlap, self.window
        ny, nx = math.ceil(h / t), math.ceil(w / t)
        # the canvas holds every window: o pixels of zeros before the image, enough after the last tile
        canvas = np.zeros((ny * t + 2 * o, nx * t + 2 * o, 3), np.float32)
        canvas[o : o + h, o : o + w] = image
        out = np.zeros((h * s, w * s, 3), np.uint8 if as_uint8 else np.float32)
        tiles = [(ty, tx) for ty in range(ny) for tx in range(nx)]
        # every call of this image runs the same number of tiles (the last one padded): one compiled shape
        batch = min(self.tile_batch, _round_up(len(tiles), self.num_devices))
        batches = [tiles[start : start + batch] for start in range(0, len(tiles), batch)]

        def dispatch(chunk) -> jax.Array:
            windows = np.stack([canvas[ty * t : ty * t + win, tx * t : tx * t + win] for ty, tx in chunk])
            # the image's rectangle in each window's coordinates (the mask is built from it on the device)
            bounds = np.array([(o - ty * t, o + h - ty * t, o - tx * t, o + w - tx * t) for ty, tx in chunk], np.int32)
            return self._dispatch(windows, bounds, crop=(o * s, t * s), as_uint8=as_uint8, pad_to=batch)

        done = 0
        for chunk, cores in self._pipelined((chunk, dispatch(chunk)) for chunk in batches):
            for k, (ty, tx) in enumerate(chunk):
                y0, x0 = ty * t, tx * t
                ch, cw = min(t, h - y0), min(t, w - x0)
                out[y0 * s : (y0 + ch) * s, x0 * s : (x0 + cw) * s] = cores[k, : ch * s, : cw * s]
            done += len(chunk)
            if progress:
                progress(done, len(tiles))
        return out


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"expected a non-empty (H, W, 3) image, got shape {image.shape}")
    return image


def _wants_uint8(out_dtype: Any) -> bool:
    if np.dtype(out_dtype) not in (np.dtype(np.uint8), np.dtype(np.float32)):
        raise ValueError(f"out_dtype must be numpy.uint8 or numpy.float32, got {np.dtype(out_dtype)}")
    return np.dtype(out_dtype) == np.dtype(np.uint8)
