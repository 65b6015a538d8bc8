"""``python -m jsr.train --config=configs/X.py --workdir=DIR [--config.field=value ...]``: SR training.

Reads top to bottom: build the mesh, the models and the optimisers; restore the latest checkpoint of ``workdir`` if
there is one; then loop: (D step, extra D passes early in training) -> G step -> log -> validate -> checkpoint.
Methods: the standard one, stage ``mse`` (pixel loss: SRResNet / ESRGAN-PSNR pre-training) or ``gan`` (SRGAN: G = w_pix
MSE + w_vgg VGG54 + w_adv adversarial [+ w_tv TV], D = BCE on logits; ESRGAN: L1, VGG conv5_4 L1 and the
relativistic average loss; D step then G step on the same batch), and Delta-STN (``config.deltastn``).

Everything that changes during training lives in ``TrainState`` (parameters, BatchNorm statistics, both optimiser
states, the step, the RNG, the plateau scale) and is checkpointed with the data iterator's position, so a run
killed at any point resumes from its last checkpoint and ends bit-for-bit where an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jsr import archs, atomic, checkpoints, compile_cache, losses, metrics, parallel
from jsr import data as jdata
from jsr import workdir as workdirs
from jsr.errors import USAGE, RunFailure, UserError, run_cli
from jsr.inference import Upscaler
from jsr.logger import MetricLogger
from jsr.models import Discriminator, Generator, VGG19Features
from jsr.models.vgg import with_input_grad_kernels
from jsr.ops.conv import resolve_conv
from jsr.optim import Plateau, make_optimizer

STAGES = ("mse", "gan")
VAL_METRICS = ("val/psnr_y", "val/ssim_y", "val/bicubic_psnr_y", "val/bicubic_ssim_y")


class TrainingError(UserError):
    """A configuration or input problem; the message names the field and says what to do."""


class TrainingDiverged(TrainingError, RunFailure):
    """A loss or parameter became non-finite: the run itself failed (exit code 1)."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    rng: jax.Array
    g_params: Any
    g_batch_stats: Any
    g_opt_state: Any
    d_params: Any
    d_batch_stats: Any
    d_opt_state: Any
    lr_scale: jax.Array  # reduce-on-plateau factor on the generator's learning rate (host-managed)


# ------------------------------------------------------------------------------------------------ models


def compute_dtype(config: ml_collections.ConfigDict):
    names = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
    if config.compute_dtype not in names:
        raise TrainingError(f"config.compute_dtype {config.compute_dtype!r}: choose from {sorted(names)}")
    return names[config.compute_dtype]


def conv_path(config: ml_collections.ConfigDict) -> str:
    """config.model.conv resolved for this run's backend and method (``jsr.ops.conv.resolve_conv``)."""
    try:
        return resolve_conv(
            config.model.get("conv", "auto"), jax.default_backend(), config.deltastn.get("enabled", False)
        )
    except ValueError as e:
        raise TrainingError(f"config.model.{e}") from e


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
    """What generator a run trains: a registered architecture and its constructor arguments (jsr_model.json)."""

    arch: str
    config: dict[str, Any]


def generator_spec(config: ml_collections.ConfigDict) -> GeneratorSpec:
    """config.model.arch '' takes init_from's architecture and arguments (config.model.n_feats etc. are then not
    used); without init_from, srresnet is built from config.model, another architecture from config.model.options."""
    arch = config.model.get("arch", "")
    if config.init_from and arch in ("", None):
        try:
            description = checkpoints.read_description(config.init_from)
        except checkpoints.ModelFileError as e:
            raise TrainingError(f"config.init_from: {e}") from e
        name = archs.resolve(description.get("arch", description["kind"])).name
        spec = GeneratorSpec(name, dict(description["config"]))
        if spec.config.get("scale", config.data.scale) != config.data.scale:
            raise TrainingError(
                f"config.init_from is a x{spec.config['scale']} {name}, but config.data.scale is "
                f"{config.data.scale}; set them equal"
            )
        return spec
    if arch not in ("", None, "srresnet"):
        if arch not in archs.REGISTRY or archs.get(arch).role != "generator":
            known = sorted(name for name, a in archs.REGISTRY.items() if a.role == "generator")
            raise TrainingError(f"config.model.arch={arch!r}: not a registered generator; choose from {known}")
        return GeneratorSpec(arch, {**config.model.get("options", {}).to_dict(), "scale": config.data.scale})
    m = config.model
    return GeneratorSpec(
        "srresnet",
        {
            "n_feats": m.n_feats,
            "num_blocks": m.num_blocks,
            "scale": config.data.scale,
            "channels": 3,
            "bicubic_skip": bool(m.get("bicubic_skip", False)),
        },
    )


def generator_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Constructor arguments of the generator (what ``jsr_model.json`` records)."""
    return generator_spec(config).config


def discriminator_patch(config: ml_collections.ConfigDict) -> int:
    if config.data.patch_size:
        return config.data.scale * config.data.patch_size
    if not config.discriminator.get("patch_size"):
        raise TrainingError("whole-image GAN training needs config.discriminator.patch_size (the HR image side)")
    return config.discriminator.patch_size


def load_vgg(config: ml_collections.ConfigDict) -> tuple[VGG19Features, Any]:
    """The frozen VGG19 of the perceptual loss: module and variables (with conv='fast', plus the kernels' input-
    gradient forms, built once here rather than in every step)."""
    module = VGG19Features(dtype=compute_dtype(config), conv=conv_path(config))
    prepare = functools.partial(with_input_grad_kernels, dtype=module.dtype) if module.conv == "fast" else dict
    path = config.loss.get("vgg_weights", "")
    if path:
        try:
            _, variables = checkpoints.load_model(path, expect="vgg19")
        except checkpoints.ModelFileError as e:
            raise TrainingError(f"config.loss.vgg_weights: {e}") from e
        return module, prepare(variables)
    if config.loss.get("allow_random_vgg", False):  # tests only: the loss is then meaningless but shaped right
        return module, prepare(
            module.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)), taps=(config.loss.vgg_tap,))
        )
    raise TrainingError(
        "the gan stage needs VGG19 weights for its perceptual loss, and config.loss.vgg_weights is empty. Convert "
        "torchvision's vgg19-dcbb9e9d.pth once with `python tools/convert_torch_weights.py --model vgg19 --input "
        "vgg19-dcbb9e9d.pth --output weights/vgg19`, then pass --config.loss.vgg_weights=weights/vgg19 "
        "(or set config.loss.vgg=0 to train without it)"
    )


def init_generator_variables(config, generator: Generator, rng) -> dict:
    p = config.data.patch_size or 16
    variables = generator.init(rng, jnp.zeros((1, p, p, 3)))
    if not config.init_from:
        return variables
    try:
        source, loaded = checkpoints.load_model(config.init_from, expect="generator")
    except checkpoints.ModelFileError as e:
        raise TrainingError(
            f"config.init_from: {e}. Convert released weights with tools/convert_torch_weights.py, or point at a "
            "training workdir"
        ) from e
    want = generator_config(config)
    got = {k: getattr(source, k, None) for k in want}
    if not isinstance(source, type(generator)):
        got = {"architecture": type(source).__name__}
    if got != want:
        raise TrainingError(
            f"config.init_from={config.init_from} is a generator with {got}, but the "
            f"config asks for {want}: set config.model.* to match"
        )
    loaded = {name: tree for name, tree in loaded.items() if tree}  # a network without BatchNorm: no batch_stats
    expected = jax.tree.map(np.shape, {name: tree for name, tree in variables.items() if tree})
    if jax.tree.map(np.shape, loaded) != expected:
        raise TrainingError(f"config.init_from={config.init_from}: variables do not match the generator's shapes")
    return loaded


def initial_state(config, generator, discriminator, tx_g, tx_d) -> TrainState:
    rng = jax.random.PRNGKey(config.seed)
    rng, g_key, d_key = jax.random.split(rng, 3)
    g_vars = init_generator_variables(config, generator, g_key)
    d_params, d_stats, d_opt = {}, {}, {}
    if discriminator is not None:
        side = getattr(discriminator, "patch_size", 32)  # the U-Net takes any multiple of 8
        d_vars = discriminator.init(d_key, jnp.zeros((1, side, side, 3)))
        d_params, d_stats = d_vars["params"], d_vars["batch_stats"]
        d_opt = tx_d.init(d_params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        rng=rng,
        g_params=g_vars["params"],
        g_batch_stats=g_vars.get("batch_stats", {}),
        g_opt_state=tx_g.init(g_vars["params"]),
        d_params=d_params,
        d_batch_stats=d_stats,
        d_opt_state=d_opt,
        lr_scale=jnp.ones((), jnp.float32),
    )


# ------------------------------------------------------------------------------------------------ steps


def make_steps(config, generator, discriminator, vgg_module, tx_g, tx_d, g_bn_train: bool):
    """The jitted train step ``(state, batch, aug_params, frozen) -> (state, metrics)`` and the D-only step.

    ``frozen`` holds the variables that are used but never trained (``{"vgg": ...}`` for the perceptual loss, else
    ``{}``). They are an argument rather than captured by the closure: captured arrays would be embedded in the
    compiled program as constants (VGG19's 80 MB of weights copied into every executable built from this step).
    """
    w = config.loss
    scale = config.data.scale
    aug = config.data.augment
    fill = jnp.asarray(jdata.augment_fill(aug))
    degraded = jdata.degradation(config.data)

    def prepare(rng, batch, aug_params):
        """uint8 batch -> augmented, degraded (lr, hr) in [-1, 1]."""
        hr, lr = jdata.to_unit(batch["hr"]), jdata.to_unit(batch["lr"])
        if aug.get("enabled", False):
            hr, lr = jdata.augment_batch(rng, hr, lr, aug_params, scale=scale, mode=aug.mode, fill=fill)
        if degraded is not None:
            lr = jdata.degrade.degrade_batch(jax.random.fold_in(rng, 1), hr, degraded, scale=scale)
        return lr * 2.0 - 1.0, hr * 2.0 - 1.0

    model_range = archs.value_range(generator)

    def g_forward(params, batch_stats, lr):
        """lr and the SR image in [-1, 1], whatever range the architecture works in."""
        variables = {"params": params, "batch_stats": batch_stats}
        lr = archs.convert_range(lr, (-1.0, 1.0), model_range)
        if g_bn_train and batch_stats:
            sr, updates = generator.apply(variables, lr, train=True, mutable=["batch_stats"])
            return archs.convert_range(sr, model_range, (-1.0, 1.0)), updates["batch_stats"]
        return archs.convert_range(generator.apply(variables, lr, train=False), model_range, (-1.0, 1.0)), batch_stats

    d_range = archs.value_range(discriminator) if discriminator is not None else (-1.0, 1.0)

    def d_apply(params, batch_stats, x):
        """Logits of images in [-1, 1], whatever range the discriminator works in; its state updated."""
        x = archs.convert_range(x, (-1.0, 1.0), d_range)
        logits, updates = discriminator.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return logits, updates["batch_stats"]

    def d_update(state, hr, sr):
        def loss_fn(params):
            real, stats = d_apply(params, state.d_batch_stats, hr)
            fake, stats = d_apply(params, stats, jax.lax.stop_gradient(sr))
            d_loss = losses.relativistic_discriminator if relativistic else losses.discriminator_bce
            return d_loss(real, fake), (stats, real, fake)

        (d_loss, (stats, real, fake)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d_params)
        updates, opt_state = tx_d.update(grads, state.d_opt_state, state.d_params)
        params = optax.apply_updates(state.d_params, updates)
        out = {"d_loss": d_loss, "d_real": jnp.mean(jax.nn.sigmoid(real)), "d_fake": jnp.mean(jax.nn.sigmoid(fake))}
        return state.replace(d_params=params, d_batch_stats=stats, d_opt_state=opt_state), out

    pixel_kind = w.get("pixel_kind", "mse")
    pixel_loss = {"mse": losses.pixel_mse, "l1": losses.pixel_l1}[pixel_kind]
    feature_loss = {"mse": losses.feature_mse, "l1": losses.feature_l1}[w.get("vgg_criterion", "mse")]
    relativistic = w.get("gan", "standard") == "relativistic"

    def sr_loss(sr, hr, state, frozen):
        """Generator loss as a function of its output: pixel, perceptual, adversarial, TV."""
        parts = {f"pixel_{pixel_kind}": pixel_loss(sr, hr)}
        total = w.pixel * parts[f"pixel_{pixel_kind}"]
        if vgg_module is not None and w.vgg:
            vgg_vars = frozen["vgg"]
            taps = (w.vgg_tap,)
            f_sr = vgg_module.apply(vgg_vars, sr, taps=taps)[w.vgg_tap]
            f_hr = jax.lax.stop_gradient(vgg_module.apply(vgg_vars, hr, taps=taps)[w.vgg_tap])
            parts["vgg"] = feature_loss(f_sr, f_hr)
            total += w.vgg * parts["vgg"]
        if discriminator is not None and w.adversarial:
            fake, _ = d_apply(state.d_params, state.d_batch_stats, sr)
            if relativistic:
                real = jax.lax.stop_gradient(d_apply(state.d_params, state.d_batch_stats, hr)[0])
                parts["adversarial"] = losses.relativistic_generator(real, fake)
            else:
                parts["adversarial"] = losses.generator_adversarial(fake)
            total += w.adversarial * parts["adversarial"]
        if w.get("tv", 0.0):
            parts["tv"] = losses.total_variation(sr)
            total += w.tv * parts["tv"]
        return total, parts

    def train_step(state: TrainState, batch, aug_params, frozen):
        rng, aug_rng = jax.random.split(state.rng)
        lr, hr = prepare(aug_rng, batch, aug_params)
        # One generator forward serves both updates: D sees its output, G's gradient flows back through a VJP.
        sr, g_vjp, g_stats = jax.vjp(lambda p: g_forward(p, state.g_batch_stats, lr), state.g_params, has_aux=True)
        out = {}
        if discriminator is not None:
            state, out = d_update(state, hr, sr)
        (g_loss, parts), d_sr = jax.value_and_grad(sr_loss, has_aux=True)(sr, hr, state, frozen)
        (grads,) = g_vjp(d_sr)
        updates, opt_state = tx_g.update(grads, state.g_opt_state, state.g_params)
        updates = jax.tree.map(lambda u: u * state.lr_scale, updates)
        params = optax.apply_updates(state.g_params, updates)
        out |= {"g_loss": g_loss, **parts, "psnr_rgb": metrics.psnr((sr + 1) / 2, (hr + 1) / 2, on="rgb").mean()}
        state = state.replace(
            step=state.step + 1, rng=rng, g_params=params, g_batch_stats=g_stats, g_opt_state=opt_state
        )
        return state, out

    def d_only_step(state: TrainState, batch, aug_params, frozen):
        """An extra discriminator pass on a fresh batch (the seed's early-training schedule)."""
        rng, aug_rng = jax.random.split(state.rng)
        lr, hr = prepare(aug_rng, batch, aug_params)
        sr, _ = g_forward(state.g_params, state.g_batch_stats, lr)
        state, out = d_update(state, hr, sr)
        return state.replace(rng=rng), out

    return jax.jit(train_step, donate_argnums=0), jax.jit(d_only_step, donate_argnums=0)


def extra_d_passes(config, step: int) -> int:
    """The seed's schedule: max(5 - epoch // 5, 1) discriminator epochs per generator epoch, i.e. extra passes."""
    if config.optim.get("d_passes", "one") != "seed":
        return 0
    epoch = step // max(1, config.optim.get("steps_per_epoch", 1))
    return max(5 - epoch // 5, 1) - 1


# ------------------------------------------------------------------------------------------------ validation


class Validator:
    """PSNR-Y / SSIM-Y of the generator on the validation split, next to bicubic on the same images: scored by
    ``jsr.evaluate``'s own evaluator and baseline (outputs rounded as saved, Pillow bicubic of the uint8 LR), so the
    numbers that choose ``best/`` are the ones ``jsr-evaluate`` reports for it."""

    def __init__(self, config, generator):
        from jsr.evaluate import MetricEvaluator, baseline

        source = jdata.make_source(config.data, "validation")
        limit = config.get("eval_max_images", 0) or len(source)
        records = [source[i] for i in range(min(limit, len(source)))]
        if not records:
            raise TrainingError("the validation split is empty: check config.data")
        self.scale = config.data.scale
        self.lr_uint8 = [r["lr"] for r in records]
        self.hr_uint8 = [r["hr"] for r in records]
        self.lr = [lr.astype(np.float32) / 255 for lr in self.lr_uint8]
        self.hr = [hr.astype(np.float32) / 255 for hr in self.hr_uint8]
        self.ids = [str(r["id"]) for r in records]
        self.mesh = parallel.make_mesh(jax.local_devices())  # every process validates on its own devices
        self.generator = generator.clone(dtype=jnp.float32)
        self.upscaler: Upscaler | None = None
        self.evaluator = MetricEvaluator(border=self.scale, mesh=self.mesh)
        sizes = [hr.shape[:2] for hr in self.hr_uint8]
        bicubic = baseline("bicubic").produce(self.ids, self.lr_uint8, sizes)
        self.bicubic = [b.astype(np.float32) / 255 for b in bicubic]
        self.baseline = self._scores(bicubic)

    def _scores(self, outputs: list[np.ndarray]) -> tuple[float, float]:
        scored = self.evaluator(outputs, self.hr_uint8)
        return float(np.mean([s["psnr_y"] for s in scored])), float(np.mean([s["ssim_y"] for s in scored]))

    def __call__(self, variables: dict) -> tuple[dict[str, float], list[np.ndarray]]:
        """Scores of the generator with ``variables`` (replicated, possibly multi-process arrays)."""
        variables = parallel.local_copy(variables)
        if self.upscaler is None:
            # the path jsr-evaluate runs a saved model with: XLA's convolutions (Winograd differs by ~1e-5)
            self.upscaler = Upscaler(self.generator, variables, mesh=self.mesh, conv="xla")
        else:
            self.upscaler.set_variables(variables)
        saved = self.upscaler.upscale_many(self.lr, out_dtype=np.uint8)  # rounded as jsr-upscale saves them
        psnr_y, ssim_y = self._scores(saved)
        outputs = [sr.astype(np.float32) / 255 for sr in saved]
        scores = {
            "val/psnr_y": psnr_y,
            "val/ssim_y": ssim_y,
            "val/bicubic_psnr_y": self.baseline[0],
            "val/bicubic_ssim_y": self.baseline[1],
        }
        return scores, outputs

    def image_grid(self, outputs: list[np.ndarray], count: int) -> np.ndarray | None:
        """LR (nearest) | bicubic | SR | HR rows for the first ``count`` images of equal size to the first."""
        rows = []
        for lr, bic, sr, hr in list(zip(self.lr, self.bicubic, outputs, self.hr, strict=True))[:count]:
            nearest = np.repeat(np.repeat(lr, self.scale, 0), self.scale, 1)
            rows.append(np.concatenate([nearest, bic, np.clip(sr, 0, 1), hr], axis=1))
        rows = [r for r in rows if r.shape == rows[0].shape]
        return np.concatenate(rows, axis=0) if rows else None


# ------------------------------------------------------------------------------------------------ the run


LOSS_CHOICES = {"pixel_kind": ("mse", "l1"), "vgg_criterion": ("mse", "l1"), "gan": ("standard", "relativistic")}
DISCRIMINATORS = {"srgan": "srgan_discriminator", "unet_sn": "unet_discriminator_sn"}


def check_config(config: ml_collections.ConfigDict) -> None:
    if config.stage not in STAGES:
        raise TrainingError(f"config.stage {config.stage!r}: choose from {STAGES}")
    for field, choices in LOSS_CHOICES.items():
        if config.loss.get(field, choices[0]) not in choices:
            raise TrainingError(f"config.loss.{field}={config.loss[field]!r}: choose from {choices}")
    if config.discriminator.get("arch", "srgan") not in DISCRIMINATORS:
        raise TrainingError(
            f"config.discriminator.arch={config.discriminator.arch!r}: choose from {tuple(DISCRIMINATORS)}"
        )
    if config.model.get("scale", config.data.scale) != config.data.scale:
        raise TrainingError(
            f"config.model.scale={config.model.scale} differs from config.data.scale="
            f"{config.data.scale}; set them equal"
        )
    for name in ("num_train_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "batch_size"):
        if config[name] <= 0:
            raise TrainingError(f"config.{name} must be positive, got {config[name]}")


@dataclasses.dataclass
class Method:
    """A training method as the loop sees it: its state, one step, and what validation / checkpoints need."""

    state: Any
    advance: Callable[[Any, int], tuple[Any, dict]]  # (state, steps done) -> (state, device metrics)
    iterators: dict[str, Any]  # data iterators whose positions are checkpointed
    generator_variables: Callable[[Any], dict]  # {"params", "batch_stats"} of the generator
    trained_params: Callable[[Any], Any]  # checked for finiteness before every save
    generator_in_state: dict[str, str]  # where load_model(workdir) finds them in a checkpoint ("a/b")
    host_scalars: Callable[[Any], dict] = lambda state: {}  # extra scalars at log points
    after_validation: Callable[[Any, dict], Any] = lambda state, scores: state
    plateau: Plateau | None = None


def build_generator(config: ml_collections.ConfigDict):
    # conv is how to compute, not what: it stays out of generator_config (jsr_model.json)
    spec = generator_spec(config)
    return archs.get(spec.arch).build(spec.config | {"dtype": compute_dtype(config), "conv": conv_path(config)})


@dataclasses.dataclass
class StandardParts:
    """What the standard method trains with, on the host (the caller places ``state`` and ``frozen``)."""

    discriminator: Discriminator | None
    state: TrainState
    frozen: dict  # the step's ``frozen`` argument: {"vgg": variables} or {}
    train_step: Callable
    d_only_step: Callable


def build_discriminator(config, conv: str):
    """SRGAN-PyTorch's discriminator (a fixed patch size) or Real-ESRGAN's U-Net with spectral norm (any size)."""
    kind = config.discriminator.get("arch", "srgan")
    if kind == "srgan":
        patch = discriminator_patch(config)
        return Discriminator(
            patch_size=patch, n_feats=config.discriminator.n_feats, dtype=compute_dtype(config), conv=conv
        )
    options = {"num_in_ch": 3, "num_feat": config.discriminator.n_feats, "dtype": compute_dtype(config), "conv": conv}
    return archs.get(DISCRIMINATORS[kind]).build(options)


def build_standard(config, generator: Generator) -> StandardParts:
    """Discriminator, VGG, optimisers, initial state and the jitted steps of ``make_steps`` for ``config``."""
    discriminator = None
    if config.stage == "gan" and config.loss.adversarial:
        discriminator = build_discriminator(config, generator.conv)
    vgg_module, vgg_vars = load_vgg(config) if config.stage == "gan" and config.loss.vgg else (None, None)
    trainable = tuple(config.optim.get("trainable", ()))
    g_bn_train = not (trainable and config.optim.get("freeze_frozen_batch_stats", True))
    template = generator.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))["params"]
    tx_g = make_optimizer(config.optim.g, template, trainable)
    tx_d = make_optimizer(config.optim.d, None) if discriminator is not None else None
    train_step, d_only_step = make_steps(config, generator, discriminator, vgg_module, tx_g, tx_d, g_bn_train)
    return StandardParts(
        discriminator=discriminator,
        state=initial_state(config, generator, discriminator, tx_g, tx_d),
        frozen={"vgg": vgg_vars} if vgg_module is not None else {},
        train_step=train_step,
        d_only_step=d_only_step,
    )


def standard_method(config, mesh, generator: Generator, train_iter) -> Method:
    """SRResNet (mse) / SRGAN (gan) training with TrainState and the jitted steps of ``make_steps``."""
    parts = build_standard(config, generator)
    discriminator, train_step, d_only_step = parts.discriminator, parts.train_step, parts.d_only_step
    state = parallel.put_replicated(parts.state, mesh)
    frozen = parallel.put_replicated(parts.frozen, mesh)
    aug_params = parallel.put_batch(
        jdata.augment_params(config.data.augment, config.batch_size // jax.process_count()), mesh
    )
    plateau = Plateau.from_config(config.optim.get("plateau"))

    def advance(state, step):
        for _ in range(extra_d_passes(config, step) if discriminator is not None else 0):
            state, _ = d_only_step(state, next(train_iter), aug_params, frozen)
        return train_step(state, next(train_iter), aug_params, frozen)

    def after_validation(state, scores):
        if method.plateau is None:
            return state
        scale = method.plateau.update(scores[config.optim.plateau.get("metric", "val/psnr_y")])
        return state.replace(lr_scale=jnp.asarray(scale, jnp.float32))

    method = Method(
        state=state,
        advance=advance,
        iterators={"train": train_iter},
        generator_variables=lambda st: {"params": st.g_params, "batch_stats": st.g_batch_stats},
        generator_in_state={"params": "g_params", "batch_stats": "g_batch_stats"},
        trained_params=lambda st: (st.g_params, st.d_params),
        host_scalars=lambda st: {"lr_scale": float(st.lr_scale)},
        after_validation=after_validation,
        plateau=plateau,
    )
    return method


def deltastn_method(config, mesh, generator: Generator, train_iter) -> Method:
    """Delta-STN (jsr/deltastn): K weight steps (general + linearised response) : 1 hyper step on validation."""
    from jsr.deltastn import jit_steps
    from jsr.deltastn.sr import make_deltastn

    if config.stage != "mse":
        raise TrainingError("config.deltastn needs stage 'mse' (the validation objective is pixel MSE)")
    if config.optim.plateau.get("enabled", False):
        raise TrainingError("config.deltastn tunes its own hyperparameters: disable config.optim.plateau")
    if generator.conv != "xla":
        raise TrainingError(
            f"config.deltastn needs config.model.conv='xla' (got {generator.conv!r}): the fast conv has no "
            "forward-mode (jvp) rule, and the response is linearised around XLA's exact convolutions"
        )
    template = generator.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))["params"]
    stn = make_deltastn(config, generator, make_optimizer(config.optim.g, template, config.optim.get("trainable", ())))
    rng = jax.random.PRNGKey(config.seed)
    variables = init_generator_variables(config, generator, rng)
    p = config.data.patch_size or 16
    state = parallel.put_replicated(
        stn.init(rng, variables, jnp.zeros((1, p, p, 3)), train=True, mutable=["batch_stats"]), mesh
    )
    steps = jit_steps(stn, mesh, donate=True)
    val_source = jdata.make_source(config.data, "validation", config.data.patch_size)
    val_batch = config.deltastn.get("val_batch_size", 0) or config.batch_size
    val_iter = jdata.make_train_iterator(config.data, val_batch, config.seed + 1, mesh, source=val_source)

    def advance(state, step):
        state, metrics = steps.weight(state, next(train_iter))
        if stn.hyper_due(step + 1):
            state, hyper_metrics = steps.hyper(state, next(val_iter))
            metrics = {**metrics, **hyper_metrics}
        return state, metrics

    def host_scalars(state):
        return {f"hp/{k}": v for k, v in stn.hparams(state).items()} | {
            f"sigma/{k}": v for k, v in stn.sigmas(state).items()
        }

    return Method(
        state=state,
        advance=advance,
        iterators={"train": train_iter, "val": val_iter},
        generator_variables=lambda st: {"params": st.params, "batch_stats": st.model_state["batch_stats"]},
        generator_in_state={"params": "params", "batch_stats": "model_state/batch_stats"},
        trained_params=lambda st: (st.params, st.response, st.u, st.s),
        host_scalars=host_scalars,
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, float]:
    """Train (or resume) in ``workdir``; returns the final validation metrics."""
    workdir = Path(workdir).absolute()
    check_config(config)
    if config.distributed.get("enabled", False):
        d = config.distributed
        parallel.initialize_distributed(
            d.get("coordinator_address") or None,
            d.get("num_processes") or None,
            d.get("process_id") if d.get("process_id", -1) >= 0 else None,
        )
    primary = jax.process_index() == 0
    lock = workdirs.lock(workdir) if primary else None  # a second run on this workdir stops here
    try:
        return _train(config, workdir, primary)
    finally:
        if lock is not None:
            lock.close()


def _train(config: ml_collections.ConfigDict, workdir: Path, primary: bool) -> dict[str, float]:
    note = print if primary else (lambda message: None)
    if primary:
        for done in workdirs.clean_leftovers(workdir, workdir / "checkpoints", [workdir / "best"]):
            note(done)
    mesh = parallel.make_mesh(jax.devices()[: config.num_devices] if config.get("num_devices", 0) else None)
    try:
        parallel.check_batch_size(config.batch_size, mesh)
    except ValueError as e:
        raise TrainingError(f"config.{e}") from None
    spec = generator_spec(config)
    generator = build_generator(config)

    # The method (plain or Delta-STN) owns its state, steps and batches.
    try:
        train_iter = jdata.make_train_iterator(config.data, config.batch_size, config.seed, mesh)
        validator = Validator(config, generator)
        build = deltastn_method if config.deltastn.get("enabled", False) else standard_method
        method = build(config, mesh, generator, train_iter)
    except (FileNotFoundError, ValueError) as e:  # missing / unprepared data set, bad files, bad data fields
        raise TrainingError(f"config: {e}") from e
    state = method.state

    # Resume, logs.
    manager = checkpoints.TrainCheckpoints(workdir / "checkpoints", keep=config.keep_checkpoints)
    extra = {"best_psnr_y": -math.inf}
    restored = manager.restore_latest(state, note=note)
    if restored is not None:
        state, saved = restored
        for name, iterator in method.iterators.items():
            iterator.set_state(saved["data"][name])
        extra = saved["extra"]
        if method.plateau is not None and saved.get("plateau"):
            method.plateau = Plateau(**saved["plateau"])
    step = int(state.step)
    logger = MetricLogger(workdir, enabled=primary, total_steps=config.num_train_steps, resume_step=step)
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")
        checkpoints.write_description(
            workdir,
            spec.arch,
            spec.config,
            {"stage": config.stage, "training_config": "config.json", "generator_in_state": method.generator_in_state},
        )
        logger.note(
            f"{'resuming at' if step else 'starting'} step {step}/{config.num_train_steps} on "
            f"{mesh.devices.size} device(s), stage {config.stage}"
            f"{', Delta-STN' if config.deltastn.get('enabled', False) else ''}, workdir {workdir}"
        )

    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))

    def last_good() -> str:
        advice = "Lower the learning rate or check the data."
        if manager.latest_step() is None:
            return f"no checkpoint had been saved yet, so a rerun starts from step 0. {advice}"
        return f"the last good checkpoint (step {manager.latest_step()}) in {manager.directory} is intact. {advice}"

    def save(step: int, final: bool = False) -> None:
        # The loss of step k is computed before update k: only the parameters themselves prove a state is good.
        if not bool(all_finite(method.trained_params(state))):
            raise TrainingDiverged(f"parameters became non-finite by step {step}; {last_good()}")
        meta = {
            "data": {name: it.get_state() for name, it in method.iterators.items()},
            "extra": extra,
            "plateau": method.plateau.state_dict() if method.plateau else None,
        }
        manager.save(step, state, meta, force=final)

    pending_metrics: list[dict] = []
    scores: dict[str, float] = {}
    try:
        while step < config.num_train_steps and stop["signal"] is None:
            state, step_metrics = method.advance(state, step)
            step += 1
            pending_metrics.append(step_metrics)
            if step % config.log_every_steps == 0 or step == config.num_train_steps:
                keys = sorted(set().union(*pending_metrics))  # hyper-step metrics appear every K steps only
                summary = {k: float(np.mean([m[k] for m in pending_metrics if k in m])) for k in keys}
                if not all(np.isfinite(v) for v in summary.values()):
                    bad = {k: v for k, v in summary.items() if not np.isfinite(v)}
                    raise TrainingDiverged(f"non-finite training metrics {bad} at step {step}; {last_good()}")
                logger.write(step, summary | method.host_scalars(state), progress=True)
                pending_metrics = pending_metrics[-1:]
            if step % config.eval_every_steps == 0 or step == config.num_train_steps:
                scores, outputs = validator(method.generator_variables(state))
                logger.write(step, scores)
                logger.images(step, "val/lr_bicubic_sr_hr", validator.image_grid(outputs, config.get("eval_images", 3)))
                state = method.after_validation(state, scores)
                if scores["val/psnr_y"] > extra["best_psnr_y"]:
                    extra = extra | {"best_psnr_y": scores["val/psnr_y"], "best_step": step}
                    if primary and jax.process_count() == 1:
                        checkpoints.save_model(
                            workdir / "best",
                            spec.arch,
                            spec.config,
                            parallel.local_copy(method.generator_variables(state)),
                            metadata={"step": step, **scores},
                            overwrite=True,
                        )
            if step % config.checkpoint_every_steps == 0:
                save(step)
        if stop["signal"] is not None:
            logger.note(f"received signal {stop['signal']}: saving step {step} and stopping")
        save(step, final=True)
    finally:
        manager.wait()  # an in-flight save completes (or fails) before anyone reads the directory
        signal.signal(signal.SIGTERM, previous)
        for iterator in method.iterators.values():
            iterator.close()
        logger.close()
    if stop["signal"] is None and not scores:  # resumed a finished run: nothing was evaluated in the loop
        scores = validator(method.generator_variables(state))[0]
    if scores and primary:
        logger.note("final: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if config.deltastn.get("enabled", False):
            plot, moves = plot_hyperparameters(workdir)
            logger.note(f"Delta-STN moved {moves}; trajectories: {plot}")
    return scores


@jax.jit
def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def plot_hyperparameters(workdir: Path) -> tuple[Path, str]:
    """``hyperparameters.png`` in the workdir (each tuned hyperparameter against the step, from metrics.jsonl) and
    a line "name first -> last, ..." of where they went."""
    from jsr.figures import line_plots
    from jsr.logger import read_series

    series = read_series(workdir, prefix="hp/")
    moves = ", ".join(
        f"{name.removeprefix('hp/')} {ys[0]:.4g} -> {ys[-1]:.4g}" for name, (_, ys) in series.items() if ys
    )
    return line_plots(series, workdir / "hyperparameters.png", title="Delta-STN hyperparameters"), moves


# ------------------------------------------------------------------------------------------------ entry point


HELP = """usage: jsr-train --config=CONFIG.py[:VARIANT] --workdir=DIR [--config.FIELD=VALUE ...] [--no-compile-cache]

Train (or resume) a super-resolution generator; DIR holds checkpoints/, best/, metrics.jsonl, tensorboard/.

examples:
  jsr-train --config=configs/quickstart.py --workdir=runs/quickstart
  jsr-train --config=configs/pokemon.py:tiny --workdir=runs/t --config.num_train_steps=20 --config.batch_size=8
  jsr-train --config=configs/quickstart.py --workdir=runs/ft --config.init_from=weights/srgan \\
      --config.data.source=folder --config.data.folder=photos/ "--config.optim.trainable=('tail|last_conv',)"

Every field and its default: jsr/config.py. An unknown field is an error. Exit codes: 0 done, 1 the run failed
(e.g. diverged), 2 bad usage or input (config, data, workdir in use). Compiled programs are cached in
~/.cache/jsr/xla (or $JAX_COMPILATION_CACHE_DIR); --no-compile-cache or JSR_NO_COMPILE_CACHE=1 turns that off."""


def main(argv: list[str] | None = None) -> int:
    from absl import flags, logging
    from ml_collections import config_flags

    argv = sys.argv if argv is None else argv
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
        print(HELP)
        return 0
    use_cache = "--no-compile-cache" not in argv[1:]
    argv = [a for a in argv if a != "--no-compile-cache"]
    flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and the config (resumes if present)")
    config_flags.DEFINE_config_file("config", None, "a configs/*.py file", lock_config=True)
    flags.mark_flags_as_required(["config", "workdir"])
    try:
        flags.FLAGS(argv)
        config = flags.FLAGS.config
        config.keys()  # a config file that failed to load raises only when first used
    except flags.Error as e:
        text = str(e).strip().splitlines()
        # a config file that raised: its own last line (e.g. "ValueError: unknown variant ...") is the sentence
        cause = text[-1].strip() if "Traceback" in str(e) else " ".join(str(e).split())
        print(
            f"error: {text[0].split(': Error whilst')[0] + ': ' if 'Traceback' in str(e) else ''}{cause}",
            file=sys.stderr,
        )
        return USAGE
    except (AttributeError, KeyError) as e:  # an unknown --config.field: ml_collections' did-you-mean message
        return _unknown_field(e, argv)
    except (OSError, ValueError, ImportError, SyntaxError) as e:  # the config file itself: missing, unreadable
        print(f"error: --config: {str(e).strip().splitlines()[-1].strip() or type(e).__name__}", file=sys.stderr)
        return USAGE
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO; keep the console readable
        logging.set_verbosity(logging.WARNING)
    compile_cache.enable(use_cache)
    return run_cli(lambda: train_and_evaluate(config, flags.FLAGS.workdir) and 0)


def _unknown_field(e: Exception, argv: list[str]) -> int:
    while e.args and isinstance(e.args[0], Exception):  # AttributeError(KeyError("'key'\nDid you mean ...?"))
        e = e.args[0]
    key, _, hint = str(e.args[0] if e.args else e).partition("\n")
    key = key.strip("'\"")
    given = [a.split("=", 1)[0] for a in argv if a.startswith("--config.") and a.split("=", 1)[0].endswith(key)]
    print(f"error: unknown config field {given[0] if given else key}" + (f"; {hint}" if hint else ""), file=sys.stderr)
    return USAGE


if __name__ == "__main__":
    sys.exit(main())
