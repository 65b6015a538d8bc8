"""The seed study's comparison on real data and real weights, finished: does Delta-STN tune its augmentation?

    python -m jsr.deltastn.examples.augmentation_study [--seeds 0 1 2] [--steps 200] [--referee ../shared/referee]
        [--out benchmarks/results/seed-study]

Generator: leftthomas/SRGAN's released x4 ``netG_epoch_4_100.pth`` (the SRGAN paper's layout), converted by
``jsr.convert``. Fine-tuned with the seed's recipe: body frozen (BatchNorm on its running statistics), the
upsamplers and the last conv trained with Adam on pixel MSE, on 64-pixel HR crops of CBSD68 whose LR is MATLAB
bicubic (the augmentation re-derives the LR from the warped HR, as the trainer's derive mode does: MATLAB's
bicubic up to its rounding, unrounded floats; with no augmentation the warp is the identity, exactly). Tuned and
selected on Set14
(MATLAB LR files), reported on Set5 + Urban100_first20 (MATLAB LR, whole images). Rows:

- ``without fine-tuning``: the released weights;
- ``fine-tuned, no augmentation``;
- ``fine-tuned, the seed's augmentation``: the seed's torchvision recipe (``jsr.data.augment.STUDY_RECIPE``);
- ``random search``: full-length runs with magnitudes drawn uniformly in the ranges Delta-STN searches, the best
  on Set14 PSNR-Y reported; as many as Delta-STN's measured wall time buys (its seconds / a plain run's, rounded;
  ``--trials`` fixes the number instead);
- ``Delta-STN``: the nine magnitudes tuned while training, from the seed's values, each in (0, 2 x seed value).

Columns: MSE ([0, 1] units, whole image), PSNR-Y and SSIM-Y (BT.601, border 4), LPIPS-alex and LPIPS-vgg (v0.1,
real ImageNet backbones: ``jsr.perceptual``), and MSEs of VGG16 relu2_2 / relu5_3 features, the VGG16 analogues
of the seed's VGG22 / VGG54 (which used VGG19, not available offline). Mean +- sample std (ddof 1) over
``--seeds``; every metric through ``jsr.evaluate.MetricEvaluator`` (jsr-evaluate's, with ``--lpips``).
Writes ``augmentation_study.json``, ``.md`` and ``.png`` (Delta-STN's trajectories) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jsr import archs, atomic, images, matlab_resize, perceptual
from jsr.config import base_config
from jsr.convert import convert_state_dict, read_state_dict
from jsr.data.augment import STUDY_RECIPE
from jsr.deltastn import jit_steps
from jsr.deltastn.examples.sr_degradation import general_only
from jsr.deltastn.sr import make_deltastn
from jsr.errors import UserError, run_cli
from jsr.evaluate import MetricEvaluator
from jsr.figures import line_plots
from jsr.optim import make_optimizer
from jsr.spec import resolve

SCALE = 4
CHECKPOINT = Path("checkpoints/leftthomas_SRGAN/netG_epoch_4_100.pth")
LR_PATCH = 16  # training and tuning crops: 16-pixel LR, 64-pixel HR (sized for 2 CPU cores)
BATCH = 8
TRAINABLE = ("^tail", "^last_conv")  # the seed's recipe: the upsamplers and the last conv
TUNED = (
    "rotation_deg",
    "translate",
    "scale",
    "shear_deg",
    "perspective_distortion",
    "perspective_prob",
    "grayscale_prob",
    "hflip_prob",
    "vflip_prob",
)
STUDY_VALUES = {name: float(np.max(STUDY_RECIPE[name])) for name in TUNED}  # translate: (0.2, 0.2) -> 0.2
OFF = -200.0  # unconstrained value of "no augmentation": sigmoid(-200) is exactly 0 in float32 (every coin off)
ROWS = ("without", "no_aug", "seed_aug", "random_search", "deltastn")
TITLES = {
    "without": "without fine-tuning",
    "no_aug": "fine-tuned, no augmentation",
    "seed_aug": "fine-tuned, the seed's augmentation",
    "random_search": "random search (best of the trials on Set14)",
    "deltastn": "Delta-STN (tuned while training)",
}
COLUMNS = {
    "mse": ("MSE", 1e4, "x1e-4"),
    "psnr_y": ("PSNR-Y", 1.0, "dB"),
    "ssim_y": ("SSIM-Y", 1.0, ""),
    "lpips_alex": ("LPIPS-alex", 1.0, ""),
    "lpips_vgg": ("LPIPS-vgg", 1.0, ""),
    "vgg16_relu2_2_mse": ("VGG16 relu2_2 MSE", 1.0, ""),
    "vgg16_relu5_3_mse": ("VGG16 relu5_3 MSE", 1.0, ""),
}


def study_config(steps: int, hyper_lr: float = 5e-2) -> ml_collections.ConfigDict:
    c = base_config()
    c.data.scale = SCALE
    c.data.patch_size = LR_PATCH
    c.data.augment.enabled = True
    c.data.augment.mode = "derive"
    c.data.augment.fill = "white"
    for name, value in STUDY_RECIPE.items():
        c.data.augment[name] = value
    c.optim.trainable = TRAINABLE
    c.optim.g.learning_rate = 5e-4
    c.optim.g.schedule = "cosine"
    c.optim.g.decay_steps = steps
    c.num_train_steps = steps
    c.batch_size = BATCH
    c.deltastn.enabled = True
    # every magnitude starts at the seed's value, in the middle of its range: the widest exploration at the start
    c.deltastn.hypers = {name: (0.0, 2.0 * value, value) for name, value in STUDY_VALUES.items()}
    c.deltastn.warmup_steps = max(1, steps // 10)
    c.deltastn.weight_steps_per_hyper = 2
    c.deltastn.hyper_lr = hyper_lr
    c.deltastn.scale_lr = hyper_lr
    c.deltastn.response_lr = 1e-3
    return c


# ------------------------------------------------------------------------------------------------ data


def load_pairs(folder: Path, lr_folder: Path | None = None, limit: int | None = None) -> list[dict]:
    """Mod-cropped uint8 HR and its LR: the folder's MATLAB LR files where given, else MATLAB bicubic made here."""
    found = images.list_images(folder)[:limit]
    if not found:
        raise UserError(f"{folder}: no images; --referee must point at the referee folder (its images/ subfolder)")
    pairs = []
    for path in found:
        hr = images.to_uint8(images.read_image(path).rgb)
        hr = matlab_resize.mod_crop(hr, SCALE)
        if lr_folder is not None:  # the benchmark sets' LR files: STEMx4.png beside STEM.png
            lr_path = lr_folder / f"{path.stem}x{SCALE}{path.suffix}"
            if not lr_path.is_file():
                raise UserError(f"{lr_path}: missing (the x{SCALE} LR file of {path})")
            lr = images.to_uint8(images.read_image(lr_path).rgb)
            if lr.shape[0] * SCALE != hr.shape[0] or lr.shape[1] * SCALE != hr.shape[1]:
                raise UserError(f"{lr_path}: {lr.shape[:2]} is not the x{SCALE} LR of {path} {hr.shape[:2]}")
        else:
            lr = matlab_resize.downscale(hr, SCALE)
        pairs.append({"name": path.stem, "hr": hr, "lr": lr})
    return pairs


def load_data(referee: Path, limit: int | None = None) -> dict:
    """``limit``: the first images of each folder only (tests)."""
    im = referee / "images"
    return {
        "train": load_pairs(im / "CBSD68", limit=limit),
        "tune": load_pairs(im / "Set14" / "HR", im / "Set14" / "LR_bicubic" / f"X{SCALE}", limit=limit),
        "test": load_pairs(im / "Set5" / "HR", limit=limit) + load_pairs(im / "Urban100_first20" / "HR", limit=limit),
    }


def random_crops(rng: np.random.Generator, pairs: list[dict], count: int) -> dict:
    """``count`` aligned (HR, LR) uint8 crops at LR-pixel positions of random images."""
    hr = np.empty((count, LR_PATCH * SCALE, LR_PATCH * SCALE, 3), np.uint8)
    lr = np.empty((count, LR_PATCH, LR_PATCH, 3), np.uint8)
    for i in range(count):
        pair = pairs[rng.integers(len(pairs))]
        h, w = pair["lr"].shape[:2]
        y, x = rng.integers(h - LR_PATCH + 1), rng.integers(w - LR_PATCH + 1)
        lr[i] = pair["lr"][y : y + LR_PATCH, x : x + LR_PATCH]
        hr[i] = pair["hr"][SCALE * y : SCALE * (y + LR_PATCH), SCALE * x : SCALE * (x + LR_PATCH)]
    return {"hr": hr, "lr": lr}


# ------------------------------------------------------------------------------------------------ model


def load_generator(referee: Path):
    path = referee / CHECKPOINT
    if not path.is_file():
        raise UserError(f"{path}: missing; --referee must point at the referee folder (its checkpoints/ subfolder)")
    arch, config, variables = convert_state_dict(None, read_state_dict(path), path)
    return arch.module(**config), variables


class Study:
    """One Delta-STN object serves every row: fixed rows run its general step at fixed hyperparameters (the same
    loss, the same augmentation code), the Delta-STN row its weight and hyper steps."""

    def __init__(self, referee: Path, steps: int, limit: int | None = None, hyper_lr: float = 5e-2):
        self.steps = steps
        self.data = load_data(referee, limit)
        self.generator, self.variables = load_generator(referee)
        self.run = resolve(study_config(steps, hyper_lr))
        optimizer = make_optimizer(self.run.optim.g, self.variables["params"], TRAINABLE)
        self.stn = make_deltastn(self.run, self.generator, optimizer)
        self.compiled = jit_steps(self.stn)
        self.general = general_only(self.stn)  # fixed hyperparameters: the general step alone
        self.hypergradient = jax.jit(lambda state, batch: self.stn.hypergradient(state, batch))
        self.evaluator = MetricEvaluator(border=SCALE, batch_size=1)  # selection on Set14: PSNR-Y only
        nets = [perceptual.load_lpips(referee / "perceptual" / f"lpips_{net}.npz") for net in ("alexnet", "vgg16")]
        self.test_evaluator = MetricEvaluator(border=SCALE, batch_size=1, lpips=nets)  # jsr-evaluate's, + LPIPS
        model_range = archs.value_range(self.generator)
        self._sr = jax.jit(
            lambda v, lr: archs.convert_range(self.generator.apply(v, lr, train=False), model_range, (0.0, 1.0))
        )
        self._to_model = lambda lr: archs.convert_range(lr, (0.0, 1.0), model_range)

    def init_state(self, seed: int, u=None):
        x = jnp.zeros((1, LR_PATCH, LR_PATCH, 3))
        return self.stn.init(jax.random.key(seed), self.variables, x, train=False, u=u)

    def u_of(self, values: dict) -> jnp.ndarray:
        return self.stn.space.unconstrain(values)

    def train(self, seed: int, u=None, tune: bool = False, before_first_hyper=None):
        """One fine-tuning run; returns (state, trajectory [(step, {name: value})]). ``before_first_hyper(state)``
        sees the weights the first hyper step starts from."""
        state = self.init_state(seed, u)
        rng, val_rng = np.random.default_rng(seed), np.random.default_rng(seed + 99)
        trajectory = [(0, self.stn.hparams(state))]
        for step in range(1, self.steps + 1):
            batch = random_crops(rng, self.data["train"], BATCH)
            if not tune:
                state = self.general(state, batch)
                continue
            state, _ = self.compiled.weight(state, batch)
            if self.stn.hyper_due(step):
                if before_first_hyper is not None and len(trajectory) == 1:
                    before_first_hyper(state)
                state, _ = self.compiled.hyper(state, random_crops(val_rng, self.data["tune"], BATCH))
                trajectory.append((step, self.stn.hparams(state)))
        return state, trajectory

    @staticmethod
    def variables_of(state) -> dict:
        return {"params": state.params, **state.model_state}

    def upscale(self, variables, pairs) -> list[np.ndarray]:
        out = []
        for pair in pairs:
            lr = self._to_model(jnp.asarray(pair["lr"][None], jnp.float32) / 255.0)
            out.append(images.to_uint8(np.asarray(self._sr(variables, lr))[0]))
        return out

    def psnr_y(self, variables, pairs) -> float:
        srs = self.upscale(variables, pairs)
        return float(np.mean([m["psnr_y"] for m in self.evaluator(srs, [p["hr"] for p in pairs])]))

    def test_metrics(self, variables) -> dict:
        """Mean over the test images of every column."""
        pairs = self.data["test"]
        rows = self.test_evaluator(self.upscale(variables, pairs), [p["hr"] for p in pairs])
        return {name: float(np.mean([r[name] for r in rows])) for name in COLUMNS}


def draw_trials(seed: int, trials: int) -> list[dict]:
    rng = np.random.default_rng(10_000 + seed)
    return [{name: float(rng.uniform(0.0, 2.0 * v)) for name, v in STUDY_VALUES.items()} for _ in range(trials)]


def run_seed(study: Study, seed: int, trials: int, log) -> dict:
    out: dict = {"rows": {}, "seconds": {}}

    def timed(name, fn):
        start = time.perf_counter()
        result = fn()
        out["seconds"][name] = time.perf_counter() - start
        return result

    off = jnp.full((study.stn.space.size,), OFF)
    no_aug, _ = timed("no_aug", lambda: study.train(seed, u=off))
    seed_aug, _ = timed("seed_aug", lambda: study.train(seed, u=study.u_of(STUDY_VALUES)))
    tuned, trajectory = timed("deltastn", lambda: study.train(seed, tune=True))

    def search():
        best = None
        for values in draw_trials(seed, count):
            state, _ = study.train(seed, u=study.u_of(values))
            score = study.psnr_y(study.variables_of(state), study.data["tune"])
            log(f"  seed {seed} trial {', '.join(f'{k}={v:.3g}' for k, v in values.items())}: Set14 {score:.3f} dB")
            if best is None or score > best[0]:
                best = (score, values, state)
        return best

    # 0: Delta-STN's compute in whole plain runs (seed_aug: a plain run compiled already)
    count = trials or max(1, round(out["seconds"]["deltastn"] / out["seconds"]["seed_aug"]))
    best_score, best_values, best_state = timed("random_search", search)
    for name, state in (("no_aug", no_aug), ("seed_aug", seed_aug), ("random_search", best_state), ("deltastn", tuned)):
        out["rows"][name] = study.test_metrics(study.variables_of(state))
        log(f"  seed {seed} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in out["rows"][name].items()))
    out["random_search"] = {"trials": count, "best_set14_psnr_y": best_score, "best": best_values}
    out["deltastn"] = {"tuned": study.stn.hparams(tuned), "trajectory": [{"step": s, **v} for s, v in trajectory]}
    return out


def hypergradient_stats(study: Study, state, seed: int, batches: int = 32) -> dict:
    """d(Set14 validation MSE)/du through the learned response on ``batches`` random tuning batches: mean, sample std
    and t = mean / (std / sqrt(n)) per hyperparameter (|t| < 2: the hyper steps follow noise, not a direction)."""
    rng = np.random.default_rng(seed + 555)
    grads = np.stack(
        [np.asarray(study.hypergradient(state, random_crops(rng, study.data["tune"], BATCH))) for _ in range(batches)]
    )
    mean, std = grads.mean(0), grads.std(0, ddof=1)
    return {
        name: {"mean": float(m), "std": float(sd), "t": float(m / (sd / np.sqrt(batches)))}
        for name, m, sd in zip(study.stn.space.names, mean, std, strict=True)
    }


def diagnose(referee: Path, seed: int, steps: int, hyper_lrs, log=print, limit=None) -> dict:
    """Why Delta-STN does (not) beat the hand-set rows: how much the tuning objective (Set14 PSNR-Y) separates no
    augmentation from the seed's, and per hyper learning rate where the magnitudes went, the Set14 score, and the
    hypergradient's signal-to-noise ratio at the start (after warm-up) and at the end of tuning."""
    out: dict = {"seed": seed, "steps": steps, "runs": {}}
    for hyper_lr in hyper_lrs:
        study = Study(referee, steps, limit, hyper_lr)
        if not out["runs"]:
            off = jnp.full((study.stn.space.size,), OFF)
            for name, u in (("no_aug", off), ("seed_aug", study.u_of(STUDY_VALUES))):
                state, _ = study.train(seed, u=u)
                out[f"set14_psnr_y_{name}"] = study.psnr_y(study.variables_of(state), study.data["tune"])
                log(f"{name}: Set14 PSNR-Y {out[f'set14_psnr_y_{name}']:.3f}")
        at_start: dict = {}

        def probe(first, study=study, at_start=at_start):
            at_start.update(hypergradient_stats(study, first, seed))

        state, trajectory = study.train(seed, tune=True, before_first_hyper=probe)
        run = {
            "tuned": study.stn.hparams(state),
            "set14_psnr_y": study.psnr_y(study.variables_of(state), study.data["tune"]),
            "hypergradient_at_start": at_start,
            "hypergradient_at_end": hypergradient_stats(study, state, seed),
            "trajectory": [{"step": s, **v} for s, v in trajectory],
        }
        out["runs"][str(hyper_lr)] = run
        t0, t1 = run["hypergradient_at_start"], run["hypergradient_at_end"]
        moves = [f"{k}={v:.3g} (t {t0[k]['t']:+.1f} -> {t1[k]['t']:+.1f})" for k, v in run["tuned"].items()]
        log(f"hyper lr {hyper_lr}: Set14 PSNR-Y {run['set14_psnr_y']:.3f}; tuned " + ", ".join(moves))
    return out


def summarise(without: dict, per_seed: dict) -> dict:
    table = {"without": {name: {"mean": value, "std": 0.0} for name, value in without.items()}}
    for row in ROWS[1:]:
        table[row] = {}
        for name in COLUMNS:
            values = [per_seed[s]["rows"][row][name] for s in per_seed]
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            table[row][name] = {"mean": float(np.mean(values)), "std": std}
    return table


def markdown(summary: dict) -> str:
    head = "| row | " + " | ".join(f"{label}{f' ({unit})' if unit else ''}" for label, _, unit in COLUMNS.values())
    lines = [head + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for row in ROWS:
        cells = []
        for name, (_, factor, _) in COLUMNS.items():
            m, s = summary["table"][row][name]["mean"] * factor, summary["table"][row][name]["std"] * factor
            digits = 2 if name == "psnr_y" else 4
            cells.append(f"{m:.{digits}f}" if row == "without" else f"{m:.{digits}f} +- {s:.{digits}f}")
        lines.append(f"| {TITLES[row]} | " + " | ".join(cells) + " |")
    seconds = {row: np.mean([r["seconds"][row] for r in summary["per_seed"].values()]) for row in ROWS[1:]}
    trials = [r["random_search"]["trials"] for r in summary["per_seed"].values()]
    lines.append("")
    lines.append(
        "Training seconds per seed (mean): "
        + ", ".join(f"{TITLES[row].split(' (')[0]} {seconds[row]:.0f}" for row in ROWS[1:])
        + f"; random-search trials per seed: {trials}."
    )
    return "\n".join(lines) + "\n"


def plot(per_seed: dict, path: Path) -> Path:
    """One panel per hyperparameter; the seeds' trajectories one after another, separated by a gap (NaN)."""
    series = {}
    for name in TUNED:
        xs, ys = [], []
        for result in per_seed.values():
            rows = result["deltastn"]["trajectory"]
            xs += [r["step"] for r in rows] + [np.nan]
            ys += [r[name] for r in rows] + [np.nan]
        series[name] = (xs, ys)
    lines = {name: [(value, f"seed recipe {value:g}")] for name, value in STUDY_VALUES.items()}
    return line_plots(series, path, title="Delta-STN on leftthomas SRGAN x4, CBSD68 -> Set14", lines=lines)


def run(referee: Path, seeds, steps: int, trials: int, out: Path | None, log=print, limit=None) -> dict:
    start = time.perf_counter()
    study = Study(referee, steps, limit)
    without = study.test_metrics(study.variables)
    log("without fine-tuning: " + ", ".join(f"{k} {v:.4g}" for k, v in without.items()))
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = run_seed(study, seed, trials, log)
    summary = {
        "table": summarise(without, per_seed),
        "per_seed": per_seed,
        "steps": steps,
        "trials": trials,
        "batch": BATCH,
        "lr_patch": LR_PATCH,
        "seeds": list(seeds),
        "hyper_ranges": {name: [0.0, 2.0 * v] for name, v in STUDY_VALUES.items()},
        "seconds": time.perf_counter() - start,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / "augmentation_study.json", json.dumps(summary, indent=1))
        atomic.write_text(out / "augmentation_study.md", markdown(summary))
        plot(per_seed, out / "augmentation_study.png")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200, help="weight steps per fine-tuning run")
    parser.add_argument("--trials", type=int, default=0, help="random-search runs per seed (0: Delta-STN's compute)")
    parser.add_argument("--referee", type=Path, default=Path("../shared/referee"))
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON, the table and the figure")
    parser.add_argument("--limit-images", type=int, default=None, help="first N images of each folder (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--diagnose",
        type=float,
        nargs="+",
        default=None,
        metavar="HYPER_LR",
        help="instead of the table: why Delta-STN does (not) win, for the first --seeds seed at these hyper "
        "learning rates (writes augmentation_study_diagnosis.json)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.trials < 0 or (args.limit_images is not None and args.limit_images < 1):
        parser.error("--steps and --limit-images must be >= 1, --trials >= 0")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {args.seeds}: each seed once")
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))

    def go():
        if args.diagnose:
            result = diagnose(args.referee, args.seeds[0], args.steps, args.diagnose, log, args.limit_images)
            if args.out is not None:
                args.out.mkdir(parents=True, exist_ok=True)
                atomic.write_text(args.out / "augmentation_study_diagnosis.json", json.dumps(result, indent=1))
            print(json.dumps(result, indent=1) if args.json else "", end="")
            return 0
        result = run(args.referee, args.seeds, args.steps, args.trials, args.out, log, args.limit_images)
        print(json.dumps(result, indent=1) if args.json else markdown(result), end="")
        return 0

    return run_cli(go)


if __name__ == "__main__":
    sys.exit(main())
