"""Grain pipeline: a random-access source -> shuffled, cropped, batched host arrays -> sharded global arrays.

Training (``train_dataset`` + ``DeviceIterator``): the whole source shuffled per epoch from the seed, repeated
forever, an aligned random crop per record drawn from (seed, batch), and of each global batch this process's rows
(``CropBatch``; so batches are a pure function of (seed, step) whatever the process count, and the iterator state
is just a batch count), each batch decoded, cropped and stacked by one of the prefetch threads (or worker
processes) and placed with the batch sharding, a few batches ahead. Batches are
``{"hr": uint8 (B, s*p, s*p, 3), "lr": uint8 (B, p, p, 3)}``.

Evaluation (``eval_batches``): every record of the split once, in order, whole or centre-cropped, padded to full
batches with a ``mask`` (1 = real example, 0 = padding).
"""

from __future__ import annotations

import collections
import copy
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import numpy as np
from jax.sharding import Mesh

from jsr.parallel import check_batch_size, put_batch


def crop_pair(example: dict, top: int, left: int, patch: int, scale: int) -> dict:
    """The LR patch at (top, left) and the HR patch covering exactly the same area (views: stacking copies them)."""
    lr = example["lr"][top : top + patch, left : left + patch]
    hr = example["hr"][scale * top : scale * (top + patch), scale * left : scale * (left + patch)]
    return {"hr": hr, "lr": lr}


def check_fits(example: dict, patch: int, scale: int) -> None:
    """Clear error for a record that cannot give a patch or whose HR is not scale x LR."""
    (h, w), (hh, hw) = example["lr"].shape[:2], example["hr"].shape[:2]
    if (hh, hw) != (scale * h, scale * w):
        raise ValueError(f"record {example.get('id')!r}: HR {hh}x{hw} is not {scale} x LR {h}x{w}")
    if min(h, w) < patch:
        raise ValueError(
            f"record {example.get('id')!r}: LR {h}x{w} is smaller than the patch {patch}; lower config.data.patch_size"
        )


def center_crop(element: dict, patch: int, scale: int) -> dict:
    """Centre crop for evaluation (``patch`` 0: the whole image); keeps the id."""
    if not patch:
        return {"hr": element["hr"], "lr": element["lr"], "id": element["id"]}
    check_fits(element, patch, scale)
    h, w = element["lr"].shape[:2]
    crop = crop_pair(element, (h - patch) // 2, (w - patch) // 2, patch, scale)
    # copies: views would keep whole decoded images alive while they wait in the prefetch buffer
    return {"hr": crop["hr"].copy(), "lr": crop["lr"].copy(), "id": element["id"]}


def stack(examples: Sequence[dict]) -> dict:
    """Batch of equal-shape examples; a clear error when whole images of different sizes meet."""
    shapes = {e["hr"].shape for e in examples}
    if len(shapes) > 1:
        raise ValueError(
            f"cannot batch whole images of different sizes {sorted(shapes)}: set config.data.patch_size "
            "to train on crops, or use a batch size of 1 per process"
        )
    return {k: np.stack([e[k] for e in examples]) for k in ("hr", "lr")}


class EpochShuffle:
    """Global position -> record: each epoch visits every record once, in a fresh order drawn from (seed, epoch).

    Grain's ``MapDataset.shuffle`` would do this with a cycle-walking index shuffle whose cost per element grows as
    the source shrinks, enough to starve a fast device on a small source (benchmarks/data_pipeline.py). One numpy
    permutation per epoch is O(1) per element. Only the newest ``KEEP_EPOCHS`` orders are kept: a batch of a tiny
    source spans many epochs, and redrawing a small permutation is cheaper than keeping a large cache of them.
    (A class: Grain worker processes pickle it.)
    """

    KEEP_EPOCHS = 8

    def __init__(self, source, seed: int):
        self.source, self.seed, self.size = source, int(seed), len(source)
        if self.size == 0:
            raise ValueError("the training source has no records: check config.data (source, data_dir, split)")
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        order = self._orders.get(epoch)
        if order is None:  # two threads may both draw it: the same permutation, so no lock is needed
            order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            orders = self._orders | {epoch: order}  # replaced, never mutated: readers in other threads stay valid
            newest = max(orders)
            self._orders = {e: o for e, o in orders.items() if e > newest - self.KEEP_EPOCHS}
        return order

    def indices(self, first: int, count: int) -> np.ndarray:
        """Record indices at positions [first, first + count): one order lookup per epoch, not per position."""
        epochs, within = np.divmod(np.arange(first, first + count), self.size)
        out = np.empty(count, np.int64)
        for epoch in range(int(epochs[0]), int(epochs[-1]) + 1):
            at = epochs == epoch
            out[at] = self.order(epoch)[within[at]]
        return out

    def __call__(self, position: int) -> dict:
        return self.source[int(self.indices(position, 1)[0])]


class CropBatch:
    """Index ``j`` -> this process's rows of GLOBAL batch ``j``: records in ``EpochShuffle`` order, aligned random
    crops (LR ``patch``, HR ``scale * patch``; ``patch`` 0 keeps whole images), stacked.

    Every process walks the same global stream and takes rows [index * b, (index + 1) * b) of each global batch of
    ``count * b``; the crop offsets of a whole global batch come from one draw seeded by (seed, j). So batches are a
    pure function of (seed, j) whatever the process count. Whole batches are the unit of work (Grain's prefetch
    polls every pending future per element: ~170 us per example at 256 pending), and a batch is cut straight into
    preallocated arrays with one random draw: per-example Grain maps, RNGs and copies held the GIL for ~45 us per
    example, which starved the thread feeding the device (an H200 host fed 77 steps/s at batch 64 with 8 threads).
    (A class, not a lambda, so that Grain worker processes can pickle it.)
    """

    def __init__(self, source, seed: int, batch_size: int, patch: int, scale: int, index: int = 0, count: int = 1):
        self.records = EpochShuffle(source, seed)
        self.seed, self.batch_size, self.patch, self.scale = int(seed), batch_size, patch, scale
        self.index, self.count = index, count

    def __call__(self, j: int) -> dict:
        b, p, s = self.batch_size, self.patch, self.scale
        first = (j * self.count + self.index) * b
        examples = [self.records.source[int(i)] for i in self.records.indices(first, b)]
        if not p:
            return stack(examples)
        # seed + 1: the crops must not share the shuffle's random stream
        offsets = np.random.default_rng([self.seed + 1, j]).random((self.count * b, 2))[self.index * b :][:b]
        lr0, hr0 = examples[0]["lr"], examples[0]["hr"]
        batch = {
            "lr": np.empty((b, p, p, *lr0.shape[2:]), lr0.dtype),
            "hr": np.empty((b, s * p, s * p, *hr0.shape[2:]), hr0.dtype),
        }
        for i, example in enumerate(examples):
            check_fits(example, p, s)
            h, w = example["lr"].shape[:2]
            top, left = int(offsets[i, 0] * (h - p + 1)), int(offsets[i, 1] * (w - p + 1))
            crop = crop_pair(example, top, left, p, s)
            batch["lr"][i], batch["hr"][i] = crop["lr"], crop["hr"]
        return batch


def process_shard() -> tuple[int, int]:
    options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    return options.shard_index, options.shard_count


def train_dataset(
    source,
    *,
    batch_size: int,
    seed: int,
    patch_size: int,
    scale: int,
    shard: tuple[int, int] = (0, 1),
    num_threads: int = 8,
    prefetch_batches: int = 4,
    num_workers: int = 0,
) -> grain.IterDataset:
    """Infinite host dataset of batches of ``batch_size`` (this process's part of the global batch) uint8 examples.

    Its state (``get_state``) counts batches."""
    batches = grain.MapDataset.range(0, sys.maxsize // (batch_size * shard[1]))
    batches = batches.map(CropBatch(source, seed, batch_size, patch_size, scale, *shard))
    # Grain keeps at most prefetch_buffer_size batches in flight: fewer than the threads would idle some of them
    read = grain.ReadOptions(
        num_threads=max(1, num_threads), prefetch_buffer_size=max(1, prefetch_batches, num_threads)
    )
    it = batches.to_iter_dataset(read)
    if num_workers > 0:
        ensure_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it


def ensure_flags_parsed() -> None:
    """Grain's worker processes read absl flags; a caller without absl.app (tests, notebooks) has not parsed them."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # the defaults; an absl.app entry point has parsed the real ones already


class DeviceIterator:
    """Global sharded batches from a Grain dataset, ``device_prefetch`` batches in flight on the devices.

    ``get_state()`` describes the position after the last batch RETURNED (not the prefetched ones), so
    ``set_state(saved)`` on a fresh iterator continues with exactly the batch an uninterrupted run would get next.
    The state is a JSON-serialisable dict ``{"format": STATE_FORMAT, "grain": <Grain's state, counting batches>}``;
    a state of another format is refused (it would resume with other data).
    """

    STATE_FORMAT = 3  # crops drawn per batch (CropBatch)

    def __init__(self, dataset: grain.IterDataset, mesh: Mesh, device_prefetch: int = 2):
        self._iter = iter(dataset)
        self._mesh = mesh
        self._depth = max(0, device_prefetch)
        self._queue: collections.deque = collections.deque()
        self._state = self._iter.get_state()

    def __iter__(self) -> DeviceIterator:
        return self

    def _fill(self, count: int) -> None:
        while len(self._queue) < count:
            host = next(self._iter)
            self._queue.append((put_batch(host, self._mesh), self._iter.get_state()))

    def __next__(self) -> dict[str, jax.Array]:
        self._fill(1 + self._depth)
        batch, self._state = self._queue.popleft()
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"format": self.STATE_FORMAT, "grain": copy.deepcopy(self._state)}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("format") == self.STATE_FORMAT:
            grain_state = state["grain"]
        else:
            raise ValueError(
                f"unrecognised training data state with keys {sorted(state)} (expected format "
                f"{self.STATE_FORMAT}): the checkpoint was written by another jsr version; start a new workdir"
            )
        self._queue.clear()
        self._iter.set_state(copy.deepcopy(grain_state))
        self._state = copy.deepcopy(grain_state)

    def close(self) -> None:
        self._queue.clear()
        close = getattr(self._iter, "close", None)
        if close is not None:
            close()


def make_device_iterator(
    source,
    mesh: Mesh,
    *,
    global_batch_size: int,
    seed: int,
    patch_size: int,
    scale: int,
    num_threads: int = 8,
    prefetch_batches: int = 4,
    num_workers: int = 0,
    device_prefetch: int = 2,
) -> DeviceIterator:
    """The training iterator of this process; the global batch must split evenly over the mesh's devices."""
    per_process = check_batch_size(global_batch_size, mesh)
    ds = train_dataset(
        source,
        batch_size=per_process,
        seed=seed,
        patch_size=patch_size,
        scale=scale,
        shard=process_shard(),
        num_threads=num_threads,
        prefetch_batches=prefetch_batches,
        num_workers=num_workers,
    )
    return DeviceIterator(ds, mesh, device_prefetch)


def pad_batch(examples: Sequence[dict], batch_size: int) -> tuple[dict, list[str]]:
    """Stack ``examples`` and pad to ``batch_size`` by repeating the last one; ``mask`` marks the real ones."""
    n = len(examples)
    padded = list(examples) + [examples[-1]] * (batch_size - n)
    batch = stack(padded)
    batch["mask"] = (np.arange(batch_size) < n).astype(np.float32)
    return batch, [e["id"] for e in examples]


def group_batches(examples: Iterator[dict], batch_size: int) -> Iterator[tuple[dict, list[str]]]:
    """Consecutive examples of equal shape in batches of ``batch_size`` (a shape change starts a new batch)."""
    group: list[dict] = []
    for example in examples:
        if group and (len(group) == batch_size or example["hr"].shape != group[0]["hr"].shape):
            yield pad_batch(group, batch_size)
            group = []
        group.append(example)
    if group:
        yield pad_batch(group, batch_size)


def eval_batches(
    source,
    mesh: Mesh,
    *,
    global_batch_size: int,
    patch_size: int,
    scale: int,
    num_threads: int = 8,
    with_ids: bool = False,
) -> Iterator[dict[str, jax.Array]] | Iterator[tuple[dict[str, jax.Array], list[str]]]:
    """Every record of ``source`` once (this process's shard), deterministic order, sharded on the mesh.

    Batches are ``{"hr", "lr", "mask"}``; whole images (``patch_size`` 0) of different sizes go in separate
    batches (one compile per distinct size). With several processes every record must have the same size
    (use ``patch_size``), so all processes step through the same batch shapes.
    """
    per_process = check_batch_size(global_batch_size, mesh)
    index, count = process_shard()
    n = len(source)
    per_shard = -(-n // count)  # ceil: every process yields the same number of batches
    ds = grain.MapDataset.source(source).map(lambda e: center_crop(e, patch_size, scale))
    read = grain.ReadOptions(num_threads=max(1, num_threads), prefetch_buffer_size=max(2 * per_process, 8))
    mine = ds[index::count].to_iter_dataset(read)
    shapes: set[tuple[int, ...]] = set()
    batches = 0
    for host, ids in group_batches(iter(mine), per_process):
        shapes.add(host["hr"].shape)
        if count > 1 and len(shapes) > 1:
            raise ValueError("multi-process evaluation of whole images of different sizes: set eval_patch_size")
        batches += 1
        device = put_batch(host, mesh)
        yield (device, ids) if with_ids else device
    # A process with one record fewer may have one batch fewer: it sends a fully masked batch so that every
    # process runs the same number of (collective) steps.
    while count > 1 and shapes and batches < -(-per_shard // per_process):
        host = {k: np.zeros_like(v) for k, v in host.items()}
        batches += 1
        yield (put_batch(host, mesh), []) if with_ids else put_batch(host, mesh)
