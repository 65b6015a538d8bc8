"""The trainer's validation: ``jsr.evaluate``'s own evaluator and bicubic baseline on the validation split."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jsr import data as jdata
from jsr import parallel
from jsr.evaluate import MetricEvaluator, baseline
from jsr.inference import Upscaler
from jsr.spec import RunSpec, TrainingError

VAL_METRICS = ("val/psnr_y", "val/ssim_y", "val/bicubic_psnr_y", "val/bicubic_ssim_y")


class Validator:
    """PSNR-Y / SSIM-Y of the generator on the validation split, next to bicubic on the same images: scored by
    ``jsr.evaluate``'s own evaluator and baseline (outputs rounded as saved, Pillow bicubic of the uint8 LR), so the
    numbers that choose ``best/`` are the ones ``jsr-evaluate`` reports for it. Under ``jax.distributed`` each process
    upscales and scores a contiguous share of the images on its own devices; the per-image scores are gathered."""

    def __init__(self, run: RunSpec, generator):
        source = jdata.make_source(run.data, "validation")
        limit = run.eval_max_images or len(source)
        records = [source[i] for i in range(min(limit, len(source)))]
        if not records:
            raise TrainingError("the validation split is empty: check config.data")
        self.scale = run.data.scale
        self.lr_uint8 = [r["lr"] for r in records]
        self.hr_uint8 = [r["hr"] for r in records]
        self.lr = [lr.astype(np.float32) / 255 for lr in self.lr_uint8]
        self.hr = [hr.astype(np.float32) / 255 for hr in self.hr_uint8]
        self.ids = [str(r["id"]) for r in records]
        self.mesh = parallel.make_mesh(jax.local_devices())  # every process validates its share on its own devices
        self.share = [int(i) for i in np.array_split(np.arange(len(records)), jax.process_count())[jax.process_index()]]
        self.generator = generator.clone(dtype=jnp.float32)
        self.upscaler: Upscaler | None = None
        self.evaluator = MetricEvaluator(border=self.scale, mesh=self.mesh)
        self.bicubic: list[np.ndarray] | None = None  # made at the first validation, not before the first step
        self.baseline: tuple[float, float] | None = None

    def _score_bicubic(self) -> None:
        """``bicubic`` and ``baseline``, made once, at the first validation."""
        if self.baseline is not None:
            return
        sizes = [hr.shape[:2] for hr in self.hr_uint8]
        bicubic = baseline("bicubic").produce(self.ids, self.lr_uint8, sizes)
        self.bicubic = [b.astype(np.float32) / 255 for b in bicubic]
        self.baseline = self._scores(bicubic)

    def _scores(self, outputs: list[np.ndarray]) -> tuple[float, float]:
        scored = self.evaluator(outputs, self.hr_uint8)
        return float(np.mean([s["psnr_y"] for s in scored])), float(np.mean([s["ssim_y"] for s in scored]))

    def _shared_scores(self, outputs: list[np.ndarray]) -> tuple[float, float]:
        """Mean PSNR-Y / SSIM-Y over every process's share (``outputs``: this process's)."""
        scored = self.evaluator(outputs, [self.hr_uint8[i] for i in self.share]) if outputs else []
        mine = np.asarray([[s["psnr_y"], s["ssim_y"]] for s in scored], np.float64).reshape(-1, 2)
        if jax.process_count() > 1:
            shares = np.array_split(np.arange(len(self.ids)), jax.process_count())
            padded = np.zeros((len(shares[0]), 2), np.float64)
            padded[: len(mine)] = mine
            # float64 travels as its bits: JAX would round it to float32
            gathered = np.asarray(multihost_utils.process_allgather(padded.view(np.uint32))).view(np.float64)
            mine = np.concatenate([g[: len(s)] for g, s in zip(gathered, shares, strict=True)])
        return float(np.mean(mine[:, 0])), float(np.mean(mine[:, 1]))

    def __call__(self, variables: dict) -> tuple[dict[str, float], list[np.ndarray]]:
        """Scores of the generator with ``variables`` (replicated, possibly multi-process arrays)."""
        variables = parallel.local_copy(variables)
        self._score_bicubic()
        if self.upscaler is None:
            # the path jsr-evaluate runs a saved model with: XLA's convolutions (Winograd differs by ~1e-5)
            self.upscaler = Upscaler(self.generator, variables, mesh=self.mesh, conv="xla")
        else:
            self.upscaler.set_variables(variables)
        mine = [self.lr[i] for i in self.share]
        saved = self.upscaler.upscale_many(mine, out_dtype=np.uint8) if mine else []  # rounded as jsr-upscale saves
        psnr_y, ssim_y = self._shared_scores(saved)
        outputs = [sr.astype(np.float32) / 255 for sr in saved]
        scores = {
            "val/psnr_y": psnr_y,
            "val/ssim_y": ssim_y,
            "val/bicubic_psnr_y": self.baseline[0],
            "val/bicubic_ssim_y": self.baseline[1],
        }
        return scores, outputs

    def image_grid(self, outputs: list[np.ndarray], count: int) -> np.ndarray | None:
        """LR (nearest) | bicubic | SR | HR rows for the first ``count`` images (of this process's share) of equal
        size to the first."""
        self._score_bicubic()
        rows = []
        for i, sr in list(zip(self.share, outputs, strict=True))[:count]:
            lr, bic, hr = self.lr[i], self.bicubic[i], self.hr[i]
            nearest = np.repeat(np.repeat(lr, self.scale, 0), self.scale, 1)
            rows.append(np.concatenate([nearest, bic, np.clip(sr, 0, 1), hr], axis=1))
        rows = [r for r in rows if r.shape == rows[0].shape]
        return np.concatenate(rows, axis=0) if rows else None
