"""``python -m jsr.evaluate``: score models on a data set; results.json / .csv / .md, a Markdown table, figures.

    python -m jsr.evaluate --model NAME=DIR [--model NAME=DIR ...] [--sr NAME=FOLDER ...] \\
        --dataset SPEC --output DIR [--vgg VGG19_DIR] [--scale 4] [--border B] [--no-quantise] \\
        [--figures N] [--zoom Y,X,SIZE] [--table full|study]

Methods: ``--model NAME=DIR`` (a converted or trained generator directory), ``--sr NAME=FOLDER`` (precomputed
outputs of any other method, one image per data-set stem, same size as the HR), and the baselines ``bicubic``
(always evaluated) and ``lanczos`` (``--model lanczos``): Pillow upscaling of the LR input.

Data sets (``--dataset``): ``tfds:NAME:SPLIT`` (a prepared TFDS data set with ``hr``/``lr`` features, read with
``tfds.data_source``, e.g. ``tfds:pokemon/lanczos:validation``, ``tfds:div2k/bicubic_x4:validation``);
``folder:DIR`` (HR images, cropped bottom/right to a multiple of the scale, LR = Pillow ``--downscale`` of that);
``pairs:HR_DIR,LR_DIR`` (matched by file stem, HR = scale x LR).

LPIPS (``--lpips FILE``, repeatable: ``jsr.perceptual``'s v0.1 weights, e.g. ../shared/referee/perceptual/
lpips_alexnet.npz / lpips_vgg16.npz): lpips_alex, lpips_vgg and the VGG16 feature MSEs vgg16_relu2_2_mse /
vgg16_relu5_3_mse, on whole unpadded images (one compile per image size).

Metrics (``jsr.metrics``): mse, psnr_y, psnr_rgb, ssim_y, ssim_rgb on uint8-quantised outputs unless ``--no-quantise``;
PSNR/SSIM crop ``--border`` (default: the scale) pixels from every side, MSE and the VGG metrics use whole images.
vgg22 / vgg54 = MSE of VGG19 relu2_2 / relu5_4 features; study_vgg22 / study_vgg54 = mse + 0.006 * that (the seed's
"VGG22" / "VGG54"). VGG metrics need ``--vgg`` (``tools/convert_torch_weights.py --model vgg19``); without it they are
omitted. Means are over images (the mean of per-image PSNRs, as papers report).

Images of any size are zero-padded into a few canvas shapes (``bucket_side``) and scored exactly (masks), in batches
sharded over the local devices: one compile per canvas shape. Files are written atomically; results.json last.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jsr import atomic, compile_cache, images, runtime
from jsr.errors import UserError, run_cli

METRICS = ("mse", "psnr_y", "psnr_rgb", "ssim_y", "ssim_rgb", "vgg22", "vgg54", "study_vgg22", "study_vgg54")
VGG_METRICS = ("vgg22", "vgg54", "study_vgg22", "study_vgg54")
# jsr.perceptual, per LPIPS network given (--lpips): its distance, and for VGG16 its feature MSEs
PERCEPTUAL_METRICS = {
    "alexnet": ("lpips_alex",),
    "vgg16": ("lpips_vgg", "vgg16_relu2_2_mse", "vgg16_relu5_3_mse"),
}
# Markdown headers and number formats; PSNR-Y and PSNR-RGB are labelled apart (they differ by ~2 dB).
COLUMNS = {
    "mse": ("MSE", ".6f"),
    "psnr_y": ("PSNR-Y (dB)", ".4f"),
    "psnr_rgb": ("PSNR-RGB (dB)", ".4f"),
    "ssim_y": ("SSIM-Y", ".4f"),
    "ssim_rgb": ("SSIM-RGB", ".4f"),
    "vgg22": ("VGG22 feat. MSE", ".4f"),
    "vgg54": ("VGG54 feat. MSE", ".4f"),
    "study_vgg22": ("study VGG22", ".6f"),
    "study_vgg54": ("study VGG54", ".6f"),
    "lpips_alex": ("LPIPS-alex", ".4f"),
    "lpips_vgg": ("LPIPS-vgg", ".4f"),
    "vgg16_relu2_2_mse": ("VGG16 relu2_2 MSE", ".4f"),
    "vgg16_relu5_3_mse": ("VGG16 relu5_3 MSE", ".4f"),
}
STUDY_TABLE = ("mse", "psnr_y", "study_vgg22", "study_vgg54")  # the columns of the seed's table
BASELINES = ("bicubic", "lanczos")
MEAN_ROW = "(mean)"  # the image column of the mean rows in results.csv
MIN_BUCKET = 64


class EvaluationError(UserError):
    """A problem with the command's inputs; the message names the flag or file and what to do."""


# ----------------------------------------------------------------------------------------------- data sets


@dataclass
class Dataset:
    """Records ``(stem, hr uint8, lr uint8)`` by index; ``sizes`` (HR) when known without decoding."""

    spec: str
    scale: int
    source: Any  # len(), [i] -> {"hr", "lr", "id"}
    sizes: list[tuple[int, int]] | None = None
    stems: list[str] | None = None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[str, np.ndarray, np.ndarray]:
        record = self.source[index]
        stem, hr, lr = str(record["id"]), record["hr"], record["lr"]
        if hr.shape[:2] != (lr.shape[0] * self.scale, lr.shape[1] * self.scale):
            raise EvaluationError(
                f"{self.spec}: record {stem!r} has HR {hr.shape[:2]} and LR {lr.shape[:2]}, not scale {self.scale}; "
                "pass the data set's --scale"
            )
        return stem, hr, lr

    def stems_and_sizes(self) -> tuple[list[str], list[tuple[int, int]]]:
        """Every stem and HR size (decodes a TFDS data set once if it must)."""
        if self.stems is None or self.sizes is None:
            records = [self[i] for i in range(len(self))]
            self.stems, self.sizes = [r[0] for r in records], [r[1].shape[:2] for r in records]
        return self.stems, self.sizes


SPEC_HELP = "expected tfds:NAME:SPLIT, folder:DIR or pairs:HR_DIR,LR_DIR"


def _check_image_folder(folder: str, spec: str, what: str) -> Path:
    path = Path(folder)
    if not folder or not path.is_dir():
        raise EvaluationError(f"--dataset {spec}: {what} folder {folder!r} does not exist")
    if not images.list_images(path):
        raise EvaluationError(
            f"--dataset {spec}: {what} folder {path} holds no images ({', '.join(images.IMAGE_SUFFIXES)}): "
            "the data set is empty"
        )
    return path


def _scan(
    hr_dir: Path, lr_dir: Path | None, scale: int, downscale: str, spec: str, max_pixels: int | None = None
) -> Dataset:
    from jsr.data import sources

    try:
        records, _ = sources.scan_folder(hr_dir, lr_dir, scale, max_pixels=max_pixels)
    except sources.BadFilesError as e:
        if len(e.bad) == 1:
            path, reason = e.bad[0]
            raise EvaluationError(f"--dataset {spec}: {path}: {reason}; fix or remove it") from e
        lines = "\n".join(f"  {path}: {reason}" for path, reason in e.bad)
        raise EvaluationError(f"--dataset {spec}: {len(e.bad)} unusable file(s):\n{lines}\nFix or remove them.") from e
    except ValueError as e:  # two files of one name, no usable image
        raise EvaluationError(f"--dataset {spec}: {e}") from None
    source = sources.FolderSource(records, scale, downscale, max_pixels=max_pixels)
    return Dataset(spec, scale, source, sizes=list(source.sizes()), stems=[r.id for r in records])


def _open_tfds(rest: str, spec: str, scale: int, data_dir: str | None) -> Dataset:
    name, sep, split = rest.partition(":")  # names hold no ':'; splits may ('validation[:10]')
    if not sep or not name or not split:
        raise EvaluationError(f"bad --dataset {spec!r}: {SPEC_HELP}")
    from jsr.data.sources import tfds_with_builders

    tfds = tfds_with_builders()
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:  # tfds raises DatasetNotFoundError, AssertionError, ValueError, FileNotFoundError
        raise EvaluationError(
            f"--dataset {spec}: cannot open TFDS {name!r} split {split!r} in {data_dir or '~/tensorflow_datasets'} "
            f"({type(e).__name__}: {e}). Prepare it first (python -m jsr.data.prepare) or pass --data-dir."
        ) from e
    from jsr.data.sources import TfdsSource

    return Dataset(spec, scale, TfdsSource(source, name, index_ids=True))


def open_dataset(
    spec: str, scale: int, data_dir: str | None = None, downscale: str = "bicubic", max_pixels: int | None = None
) -> Dataset:
    """Parse a ``--dataset`` spec; raises ``EvaluationError`` for bad syntax, missing or empty folders, bad files
    (folders: images over ``max_pixels``, default ``images.MAX_PIXELS``, are refused unread)."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise EvaluationError(f"bad --dataset {spec!r}: {SPEC_HELP}")
    if kind == "folder":
        dataset = _scan(_check_image_folder(rest, spec, "HR"), None, scale, downscale, spec, max_pixels)
    elif kind == "pairs":
        parts = rest.split(",")
        if len(parts) != 2:
            raise EvaluationError(f"bad --dataset {spec!r}: pairs needs two folders, pairs:HR_DIR,LR_DIR")
        hr_dir, lr_dir = (_check_image_folder(p, spec, what) for p, what in zip(parts, ("HR", "LR"), strict=True))
        dataset = _scan(hr_dir, lr_dir, scale, downscale, spec, max_pixels)
    elif kind == "tfds":
        dataset = _open_tfds(rest, spec, scale, data_dir)
    else:
        raise EvaluationError(f"bad --dataset {spec!r}: unknown kind {kind!r}; {SPEC_HELP}")
    if len(dataset) == 0:
        raise EvaluationError(f"--dataset {spec}: the data set is empty")
    return dataset


# ----------------------------------------------------------------------------------------------- methods


@dataclass
class EvaluatedMethod:
    """One row of the table: ``produce(stems, lrs, hr_sizes)`` -> SR images (uint8, or float in [0, 1])."""

    name: str
    kind: str  # 'model' | 'sr' | 'baseline'
    produce: Callable[[Sequence[str], Sequence[np.ndarray], Sequence[tuple[int, int]]], list[np.ndarray]]
    upscaler: Any = None
    quantise: bool = True  # False: its floats are scored as they are, whatever --quantise says


def parse_named(value: str, flag: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise EvaluationError(f"bad {flag} {value!r}: expected NAME=PATH")
    return name, path


def baseline(method: str) -> EvaluatedMethod:
    def produce(stems, lrs, sizes):
        return [images.resize(lr, size, method) for lr, size in zip(lrs, sizes, strict=True)]

    return EvaluatedMethod(method, "baseline", produce)


def model_method(name: str, directory: str, scale: int, mesh, quantise: bool = True) -> EvaluatedMethod:
    """A generator's outputs; ``quantise``: rounded to uint8 on the device, as ``jsr-upscale`` saves them."""
    from jsr.checkpoints import ModelFileError, load_model
    from jsr.hub import resolve_weights
    from jsr.inference import Upscaler

    try:
        directory = str(resolve_weights(directory))  # a named release: downloaded, verified and converted once
        module, variables = load_model(directory, expect="generator")
    except (ModelFileError, UserError) as e:  # a missing directory, an unknown release name
        raise EvaluationError(f"--model {name}={directory}: {e}") from e
    if module.scale != scale:
        raise EvaluationError(f"--model {name}={directory} upscales x{module.scale}, the data set is x{scale}")
    # the model's own conv path: Winograd's ~4 s of extra compilation per bucket shape rarely pays in an evaluation
    upscaler = Upscaler(module, variables, mesh=mesh, conv=module.conv)

    out_dtype = np.uint8 if quantise else np.float32

    def produce(stems, lrs, sizes):
        return upscaler.upscale_many([lr.astype(np.float32) / 255.0 for lr in lrs], out_dtype=out_dtype)

    return EvaluatedMethod(name, "model", produce, upscaler)


def _files_by_stem(folder: Path, flag: str) -> dict[str, Path]:
    try:
        return images.files_by_stem(folder)
    except images.DuplicateStem as e:
        raise EvaluationError(f"{flag}: {e}") from None


def sr_folder_method(
    name: str,
    folder: str,
    stems: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    max_pixels: int | None = None,
    truncated: bool = False,
) -> EvaluatedMethod:
    """Precomputed outputs matched by stem; every data-set stem must have one, of the HR's size (checked now, from
    the headers: upright as read, refused over ``max_pixels`` like the data set's files). ``truncated``: the files
    were saved by truncation (``astype(uint8)``), so a stored v stands for [v, v + 1): each is scored as v + 0.5."""
    flag = f"--sr {name}={folder}"
    path = Path(folder)
    if not path.is_dir():
        raise EvaluationError(f"{flag}: folder does not exist")
    files = _files_by_stem(path, flag)
    missing = [s for s in stems if s not in files]
    if missing:
        shown = "\n".join(f"  {s}" for s in missing[:50]) + (
            f"\n  ... and {len(missing) - 50} more" * (len(missing) > 50)
        )
        raise EvaluationError(
            f"{flag}: no output for {len(missing)} of {len(stems)} data-set image(s) (matched by file stem):\n{shown}"
        )
    try:
        found = {s: images.image_size(files[s], max_pixels) for s in stems}
    except images.ImageReadError as e:
        raise EvaluationError(f"{flag}: {e}") from None
    wrong = [
        f"  {files[s]}: {found[s]}, HR is {tuple(size)}"
        for s, size in zip(stems, sizes, strict=True)
        if found[s] != tuple(size)
    ]
    if wrong:
        raise EvaluationError(f"{flag}: {len(wrong)} output(s) differ in size from the HR image:\n" + "\n".join(wrong))
    extra = sorted(set(files) - set(stems))
    if extra:
        print(f"note: {flag}: {len(extra)} file(s) match no data-set image and are ignored (e.g. {extra[0]})")

    def produce(stems_, lrs, sizes_):
        from jsr.data.sources import to_rgb_uint8

        saved = [to_rgb_uint8(images.read_image(files[s], max_pixels), (1.0, 1.0, 1.0)) for s in stems_]
        return [(x.astype(np.float32) + 0.5) / 255.0 for x in saved] if truncated else saved

    return EvaluatedMethod(name, "sr", produce, quantise=not truncated)


def load_metric_vgg(directory: str | None):
    """(module, variables) of converted VGG19 weights, or None (with a printed note) when none are given."""
    if directory is None:
        print(
            "note: VGG metrics (vgg22, vgg54, study_vgg22, study_vgg54) omitted: no --vgg given. Convert torchvision's "
            "vgg19-dcbb9e9d.pth with `python tools/convert_torch_weights.py --model vgg19 --input FILE --output DIR` "
            "and pass --vgg DIR."
        )
        return None
    from jsr.checkpoints import ModelFileError, load_model

    try:
        return load_model(directory, expect="vgg19")
    except ModelFileError as e:
        raise EvaluationError(f"--vgg {directory}: {e}") from e


def load_lpips(path: str):
    """A jsr.perceptual LPIPS network from ``--lpips FILE`` (a bad file: one line naming it)."""
    from jsr.perceptual import load_lpips as load

    try:
        return load(path)
    except UserError as e:
        raise EvaluationError(f"--lpips {path}: {e}") from e


# ----------------------------------------------------------------------------------------------- metrics


def bucket_side(n: int) -> int:
    """Canvas side for an image side ``n``: multiples of 64 up to 512, then steps of 1/8 of the next power of two.

    At most 8 sides per octave (padding under 25%), every one a multiple of 16 (exact VGG masking).
    """
    step = max(MIN_BUCKET, 2 ** max(0, math.ceil(math.log2(max(n, 1))) - 3))
    return -(-n // step) * step


class MetricEvaluator:
    """``evaluator(srs, hrs)`` -> per-image metric dicts, jitted once per canvas shape, sharded over ``mesh``.

    ``srs``: uint8 or float [0, 1] HxWx3 images; ``hrs``: uint8, the same sizes. ``quantise`` rounds the SR images to
    uint8 first (a no-op on uint8 inputs), on the host: SR and HR then reach the device converted by the same numpy
    division, so equal pixels are equal floats and identical images score MSE 0 and PSNR inf exactly (XLA's own
    ``/ 255`` multiplies by the reciprocal, 1 ulp off numpy's for half the levels: ~154 dB instead).
    ``compiled_shapes`` holds every canvas shape run (= compiles).
    """

    def __init__(
        self, border: int, vgg=None, quantise: bool = True, batch_size: int | None = None, mesh=None, lpips=()
    ):
        import jax

        from jsr import metrics, parallel

        self.mesh = mesh or parallel.make_mesh(jax.local_devices())
        devices = self.mesh.devices.size
        self.batch_size = -(-(batch_size or devices) // devices) * devices  # a multiple of the device count
        self.border = border
        self.quantise = quantise
        self.names = [m for m in METRICS if vgg is not None or m not in VGG_METRICS]
        # ``lpips``: loaded jsr.perceptual networks, at most one of each kind
        self._lpips = {lp.net: lp for lp in lpips}
        if len(self._lpips) != len(lpips):
            raise EvaluationError("--lpips: give each LPIPS network (AlexNet, VGG16) once")
        self._perceptual_names = [m for net, names in PERCEPTUAL_METRICS.items() if net in self._lpips for m in names]
        self.names += self._perceptual_names
        self.compiled_shapes: set[tuple[int, ...]] = set()
        vgg_module = None if vgg is None else vgg[0]
        self._vgg_variables = None if vgg is None else parallel.put_replicated(vgg[1], self.mesh)

        def kernel(vgg_variables, sr, hr, valid):
            pair = None if vgg_module is None else (vgg_module, vgg_variables)
            return metrics.all_metrics(sr, hr, border, valid, pair)

        self._kernel = jax.jit(kernel)
        self._put = (lambda batch: parallel.put_batch(batch, self.mesh)) if devices > 1 else (lambda batch: batch)

    @property
    def compiles(self) -> int:
        return len(self.compiled_shapes)

    def __call__(
        self, srs: Sequence[np.ndarray], hrs: Sequence[np.ndarray], quantise: bool | None = None
    ) -> list[dict[str, float]]:
        import jax

        quantise = self.quantise if quantise is None else quantise
        out: list[dict[str, float] | None] = [None] * len(hrs)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (sr, hr) in enumerate(zip(srs, hrs, strict=True)):
            if sr.shape[:2] != hr.shape[:2]:
                raise ValueError(f"SR {sr.shape} and HR {hr.shape} differ in size")
            groups.setdefault((bucket_side(hr.shape[0]), bucket_side(hr.shape[1])), []).append(i)
        for (bh, bw), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                sr_canvas = np.zeros((self.batch_size, bh, bw, 3), np.float32)
                hr_canvas = np.zeros_like(sr_canvas)
                valid = np.zeros((self.batch_size, 2), np.int32)  # padding entries: empty (their values are dropped)
                for k, i in enumerate(chunk):
                    h, w = hrs[i].shape[:2]
                    sr_canvas[k, :h, :w] = _unit(srs[i], quantise)
                    hr_canvas[k, :h, :w] = _unit(hrs[i])
                    valid[k] = (h, w)
                self.compiled_shapes.add(sr_canvas.shape)
                # float32 convolutions in the VGG metrics, also where the default would be TF32 / bf16 passes
                with jax.default_matmul_precision("float32"), np.errstate(all="ignore"):
                    values = self._kernel(self._vgg_variables, *self._put((sr_canvas, hr_canvas, valid)))
                    values = {name: np.asarray(v, np.float64) for name, v in values.items()}
                for k, i in enumerate(chunk):
                    out[i] = {name: float(values[name][k]) for name in self.names if name not in self._perceptual_names}
                    if self._lpips:  # whole unpadded images: a zero border would change the features
                        out[i] |= self._perceptual(_unit(srs[i], quantise), _unit(hrs[i]))
        return out  # type: ignore[return-value]

    def _perceptual(self, sr: np.ndarray, hr: np.ndarray) -> dict[str, float]:
        import jax

        from jsr import perceptual

        with jax.default_matmul_precision("float32"):
            values = perceptual.perceptual_distances(
                self._lpips.get("vgg16"), self._lpips.get("alexnet"), sr[None], hr[None]
            )
        return {name: float(np.asarray(v)[0]) for name, v in values.items()}


def _unit(image: np.ndarray, quantise: bool = False) -> np.ndarray:
    """uint8 -> float32 [0, 1] by one numpy division (the same floats for SR and HR); floats as they are, or rounded
    to the uint8 grid first when ``quantise``."""
    if quantise and image.dtype != np.uint8:
        image = images.to_uint8(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.asarray(image, np.float32)


def check_size(stem: str, size: tuple[int, int], border: int, with_vgg: bool, lpips_nets=()) -> None:
    """SSIM needs 11 pixels inside the border; relu5_4 needs 16 pixels; LPIPS its network's minimum."""
    from jsr.perceptual import MIN_SIZE

    needs = {f"SSIM with --border {border}": 2 * border + 11, "VGG54": 16 if with_vgg else 0}
    needs |= {f"LPIPS-{net}": MIN_SIZE[net] for net in lpips_nets}
    what, need = max(needs.items(), key=lambda item: item[1])
    if min(size) < need:
        raise EvaluationError(f"image {stem!r} is {size[0]}x{size[1]}: too small for {what} (needs {need} px a side)")


# ----------------------------------------------------------------------------------------------- results


@dataclass
class Results:
    """Per-image metrics of every method, in data-set order; ``means`` averages over images."""

    methods: list[str]
    metric_names: list[str]
    per_image: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def add(self, method: str, stem: str, values: dict[str, float]) -> None:
        self.per_image.setdefault(method, {})[stem] = values

    def means(self, method: str) -> dict[str, float]:
        rows = list(self.per_image.get(method, {}).values())
        return {m: float(np.mean([r[m] for r in rows])) for m in self.metric_names}

    def to_json(self, settings: dict) -> dict:
        return {
            "models": {
                m: {"mean": _finite(self.means(m)), "per_image": {s: _finite(v) for s, v in self.per_image[m].items()}}
                for m in self.methods
            },
            "settings": settings,
        }

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["model", "image", *self.metric_names])
        for m in self.methods:
            for stem, values in self.per_image[m].items():
                writer.writerow([m, stem, *(repr(values[k]) for k in self.metric_names)])
            writer.writerow([m, MEAN_ROW, *(repr(v) for v in self.means(m).values())])
        return buffer.getvalue()

    def markdown(self, columns: Sequence[str]) -> str:
        columns = [c for c in columns if c in self.metric_names]
        lines = [
            "| model | " + " | ".join(COLUMNS[c][0] for c in columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for m in self.methods:
            means = self.means(m)
            lines.append(f"| {m} | " + " | ".join(format(means[c], COLUMNS[c][1]) for c in columns) + " |")
        return "\n".join(lines) + "\n"


def _finite(values: dict[str, float]) -> dict[str, float | str]:
    """JSON has no inf/nan numbers (json.dumps would write a bare Infinity that strict readers reject): the PSNR of
    identical images is written as the string "Infinity" (NaN as "NaN"), which float() and JavaScript's Number()
    read back."""
    return {k: (v if math.isfinite(v) else json.dumps(v)) for k, v in values.items()}


def figure_panels(
    hr: np.ndarray, lr: np.ndarray, outputs: dict[str, np.ndarray], psnrs: dict[str, float], scale: int
) -> list[tuple[str, np.ndarray]]:
    """HR | each method (bicubic last) with its PSNR-Y | LR enlarged with nearest neighbour."""
    from jsr.figures import nearest_upscale

    order = [m for m in outputs if m != "bicubic"] + ["bicubic"]
    panels = [("HR (ground truth)", hr)]
    panels += [(f"{m}\nPSNR-Y {psnrs[m]:.2f} dB", _uint8(outputs[m])) for m in order]
    panels.append((f"LR input (x{scale}, nearest)", nearest_upscale(lr, hr.shape[:2])))
    return panels


def _uint8(image: np.ndarray) -> np.ndarray:
    return image if image.dtype == np.uint8 else images.to_uint8(image)


# ----------------------------------------------------------------------------------------------- the command

CHUNK_IMAGES = 64
CHUNK_PIXELS = 2**24  # HR pixels held at once (times the methods' outputs): ~6 DIV2K images, 64 Pokemon images


def chunks(dataset: Dataset):
    """Records in data-set order, in lists small enough to hold every method's outputs in memory."""
    chunk: list[tuple[str, np.ndarray, np.ndarray]] = []
    pixels = 0
    for i in range(len(dataset)):
        chunk.append(dataset[i])
        pixels += chunk[-1][1].shape[0] * chunk[-1][1].shape[1]
        if len(chunk) == CHUNK_IMAGES or pixels >= CHUNK_PIXELS:
            yield chunk
            chunk, pixels = [], 0
    if chunk:
        yield chunk


@dataclass
class Run:
    """What a finished evaluation produced (for tests and callers): results, compile counts, written files."""

    results: Results
    metric_compiles: int
    upscaler_compiles: dict[str, int]
    files: list[Path]


def parse_zoom(value: str | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    try:
        y, x, size = (int(v) for v in value.split(","))
    except ValueError:
        raise EvaluationError(f"bad --zoom {value!r}: expected Y,X,SIZE in HR pixels, e.g. 64,96,48") from None
    if size < 1 or y < 0 or x < 0:
        raise EvaluationError(f"bad --zoom {value!r}: Y and X must be >= 0 and SIZE >= 1")
    return y, x, size


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jsr-evaluate",
        description=__doc__,
        epilog="examples:\n"
        "  jsr-evaluate --model mine=runs/quickstart/best --dataset folder:Set5/HR --output results/set5\n"
        "  jsr-evaluate --model g=pan-x4 --dataset pairs:Set5/HR,Set5/LR_bicubic/X4 --output results/pan --figures 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a generator (repeatable); "
                   "'lanczos' adds that baseline (bicubic is always evaluated)")  # fmt: skip
    p.add_argument("--sr", action="append", default=[], metavar="NAME=FOLDER", help="precomputed outputs (repeatable)")
    p.add_argument(
        "--sr-truncated",
        action="append",
        default=[],
        metavar="NAME",
        help="the --sr NAME files were saved by truncating floats (astype(uint8)), not rounding: score each stored "
        "value v as v + 0.5, the middle of the values it stands for (repeatable)",
    )
    p.add_argument(
        "--dataset", required=True, metavar="SPEC", help="tfds:NAME:SPLIT, folder:DIR or pairs:HR_DIR,LR_DIR"
    )
    p.add_argument("--output", required=True, type=Path, help="folder for results.json/.csv/.md and figures/")
    p.add_argument("--vgg", default=None, metavar="DIR", help="converted VGG19 (tools/convert_torch_weights.py)")
    p.add_argument("--lpips", action="append", default=[], metavar="FILE",
                   help="LPIPS v0.1 weights (.npz, AlexNet or VGG16; repeatable): adds LPIPS column(s)")  # fmt: skip
    p.add_argument("--scale", type=int, default=4, help="upscaling factor of the data set (default 4)")
    p.add_argument("--border", type=int, default=None, help="pixels cropped per side for PSNR/SSIM (default: scale)")
    p.add_argument("--quantise", action=argparse.BooleanOptionalAction, default=True,
                   help="round model outputs to uint8 before scoring, as saved PNGs are (default: on)")  # fmt: skip
    p.add_argument(
        "--downscale",
        choices=images.DOWNSCALES,
        default="bicubic",
        help="how folder: data sets make their LR: Pillow's filters, or 'matlab' (MATLAB imresize bicubic, bit-exact: "
        "what published benchmark tables use)",
    )
    p.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None, help="TFDS data_dir for tfds: data sets")
    p.add_argument("--max-pixels", type=images.pixel_limit, default=images.MAX_PIXELS, metavar="N",
                   help="refuse image files over N pixels unread (default %(default)s)")  # fmt: skip
    p.add_argument("--figures", type=int, default=4, help="comparison figures for the first N images (0: none)")
    p.add_argument("--zoom", default=None, metavar="Y,X,SIZE", help="add a zoomed crop row to the figures")
    p.add_argument(
        "--table", choices=("full", "study"), default="full", help="'study': the original study's columns only"
    )
    p.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=int,
        default=None,
        help="images per metric batch (default: device count)",
    )
    return p


def _methods(args, dataset: Dataset, mesh) -> list[EvaluatedMethod]:
    methods: list[EvaluatedMethod] = []
    seen: set[str] = set()

    def add(method: EvaluatedMethod):
        if method.name in seen:
            raise EvaluationError(f"two methods are named {method.name!r}; give each --model/--sr a distinct NAME")
        seen.add(method.name)
        methods.append(method)

    for value in args.model:
        if value in BASELINES:
            if value != "bicubic":
                add(baseline(value))
            continue
        name, directory = parse_named(value, "--model")
        if name in BASELINES:
            raise EvaluationError(f"--model {value}: {name!r} names a baseline; choose another NAME")
        add(model_method(name, directory, dataset.scale, mesh, args.quantise))
    unknown = sorted(set(args.sr_truncated) - {parse_named(v, "--sr")[0] for v in args.sr})
    if unknown:
        raise EvaluationError(f"--sr-truncated {unknown[0]}: no --sr {unknown[0]}=FOLDER is given")
    if args.sr:
        stems, sizes = dataset.stems_and_sizes()
        for value in args.sr:
            name, folder = parse_named(value, "--sr")
            if name in BASELINES:
                raise EvaluationError(f"--sr {value}: {name!r} names a baseline; choose another NAME")
            add(sr_folder_method(name, folder, stems, sizes, args.max_pixels, name in args.sr_truncated))
    add(baseline("bicubic"))
    return methods


def evaluate(args: argparse.Namespace) -> Run:
    """Run the evaluation described by parsed arguments; raises ``EvaluationError`` before writing on bad input."""
    if args.scale < 1:
        raise EvaluationError(f"--scale must be >= 1, got {args.scale}")
    border = args.scale if args.border is None else args.border
    if border < 0:
        raise EvaluationError(f"--border must be >= 0, got {border}")
    zoom = parse_zoom(args.zoom)
    dataset = open_dataset(args.dataset, args.scale, args.data_dir, args.downscale, args.max_pixels)
    if args.output.exists() and not args.output.is_dir():
        raise EvaluationError(f"--output {args.output} is a file; give a folder")

    import jax
    from tqdm import tqdm

    from jsr import parallel
    from jsr.figures import comparison_figure

    mesh = parallel.make_mesh(jax.local_devices())
    methods = _methods(args, dataset, mesh)
    vgg = load_metric_vgg(args.vgg)
    lpips = [load_lpips(path) for path in args.lpips]
    nets = [lp.net for lp in lpips]
    if dataset.sizes is not None:
        for stem, size in zip(dataset.stems or [], dataset.sizes, strict=True):
            check_size(stem, size, border, vgg is not None, nets)
    evaluator = MetricEvaluator(border, vgg, args.quantise, args.batch_size, mesh, lpips)
    results = Results([m.name for m in methods], list(evaluator.names))
    files: list[Path] = []
    seen: set[str] = set()
    start = 0
    with tqdm(total=len(dataset), unit="img", desc="evaluate", file=sys.stderr) as bar:
        for records in chunks(dataset):
            stems, hrs, lrs = (list(x) for x in zip(*records, strict=True))
            for stem, hr in zip(stems, hrs, strict=True):
                if stem in seen:
                    raise EvaluationError(f"--dataset {args.dataset}: two records are named {stem!r}")
                seen.add(stem)
                check_size(stem, hr.shape[:2], border, vgg is not None, nets)
            sizes = [hr.shape[:2] for hr in hrs]
            outputs = {}
            for method in methods:
                outputs[method.name] = method.produce(stems, lrs, sizes)
                scored = evaluator(outputs[method.name], hrs, quantise=method.quantise and args.quantise)
                for stem, values in zip(stems, scored, strict=True):
                    results.add(method.name, stem, values)
            for k in range(max(0, min(len(records), args.figures - start))):
                stem = stems[k]
                psnrs = {m.name: results.per_image[m.name][stem]["psnr_y"] for m in methods}
                panels = figure_panels(hrs[k], lrs[k], {m: o[k] for m, o in outputs.items()}, psnrs, dataset.scale)
                files.append(images.write_png(args.output / "figures" / f"{stem}.png", comparison_figure(panels, zoom)))
            start += len(records)
            bar.update(len(records))

    settings = {
        "dataset": args.dataset,
        "scale": dataset.scale,
        "border": border,
        "quantised": bool(args.quantise),
        "num_images": len(dataset),
        "vgg": args.vgg,
        "lpips": list(args.lpips),
        "methods": {m.name: m.kind for m in methods},
        "mean": "mean over images of per-image values",
    }
    table = results.markdown(STUDY_TABLE if args.table == "study" else results.metric_names)
    for name, text in (("results.csv", results.to_csv()), ("results.md", table)):
        atomic.write_text(args.output / name, text)
        files.append(args.output / name)
    # results.json last: its presence means the rest is complete
    atomic.write_text(args.output / "results.json", json.dumps(results.to_json(settings), indent=2) + "\n")
    files.append(args.output / "results.json")
    print(table, end="")
    print(f"wrote {args.output / 'results.json'}, results.csv, results.md and {len(files) - 3} figure(s)")
    upscaler_compiles = {m.name: len(m.upscaler.compiled_shapes) for m in methods if m.upscaler is not None}
    return Run(results, evaluator.compiles, upscaler_compiles, files)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    compile_cache.add_flag(parser)
    args = parser.parse_args(argv)
    runtime.start_command(not args.no_compile_cache)
    return run_cli(lambda: evaluate(args) and 0)


if __name__ == "__main__":
    sys.exit(main())
