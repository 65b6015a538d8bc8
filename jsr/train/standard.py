"""The standard method: SRResNet / ESRGAN-PSNR (stage ``mse``: the pixel loss) and SRGAN / ESRGAN (stage ``gan``:
G = w_pix pixel + w_vgg VGG features + w_adv adversarial [+ w_tv TV], D = BCE on logits or the relativistic
average loss; D step then G step on the same batch). Everything that changes lives in ``TrainState``."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from jsr import archs, checkpoints, losses, metrics, parallel, program_cache
from jsr import data as jdata
from jsr.models import VGG19Features
from jsr.models.vgg import with_input_grad_kernels
from jsr.ops.conv import FAST_PATHS
from jsr.optim import Plateau, make_optimizer
from jsr.spec import DISCRIMINATORS, OptimSpec, RunSpec, TrainingError, as_spec
from jsr.train.common import init_generator_variables


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
    learning_rate_scale: jax.Array  # reduce-on-plateau factor on the generator's learning rate (host-managed)


def load_perceptual_vgg(run: RunSpec) -> tuple[VGG19Features, Any]:
    """The frozen VGG19 of the perceptual loss: module and variables (with conv='fast' / 'winograd', plus the
    kernels' input-gradient forms, built once here rather than in every step)."""
    module = VGG19Features(dtype=run.model.dtype, conv=run.model.conv)
    prepare = functools.partial(with_input_grad_kernels, dtype=module.dtype) if module.conv in FAST_PATHS else dict
    if run.loss.vgg_weights:
        try:
            _, variables = checkpoints.load_model(run.loss.vgg_weights, expect="vgg19")
        except checkpoints.ModelFileError as e:
            raise TrainingError(f"config.loss.vgg_weights: {e}") from e
        return module, prepare(variables)
    if run.loss.allow_random_vgg:  # tests only: the loss is then meaningless but shaped right
        init = jax.jit(functools.partial(module.init, taps=(run.loss.vgg_tap,)))
        return module, prepare(init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3))))
    raise TrainingError(
        "the gan stage needs VGG19 weights for its perceptual loss, and config.loss.vgg_weights is empty. Convert "
        "torchvision's vgg19-dcbb9e9d.pth once with `python tools/convert_torch_weights.py --model vgg19 --input "
        "vgg19-dcbb9e9d.pth --output weights/vgg19`, then pass --config.loss.vgg_weights=weights/vgg19 "
        "(or set config.loss.vgg=0 to train without it)"
    )


def build_discriminator(run: RunSpec):
    """SRGAN-PyTorch's discriminator (a fixed patch size) or Real-ESRGAN's U-Net with spectral norm (any size)."""
    spec = run.discriminator
    common = {"dtype": run.model.dtype, "conv": spec.conv}
    if spec.arch == "srgan":
        return archs.get(DISCRIMINATORS["srgan"]).build(
            {"patch_size": spec.patch_size, "n_feats": spec.n_feats} | common
        )
    return archs.get(DISCRIMINATORS[spec.arch]).build({"num_in_ch": 3, "num_feat": spec.n_feats} | common)


def initial_state(run: RunSpec, generator, discriminator, tx_d) -> tuple[TrainState, optax.GradientTransformation]:
    """The state at step 0 and the generator's optimizer (labelled by the initial parameters' tree)."""
    rng = jax.random.PRNGKey(run.seed)
    rng, g_key, d_key = jax.random.split(rng, 3)
    g_vars = init_generator_variables(run, generator, g_key)
    tx_g = make_optimizer(run.optim.g, g_vars["params"], run.optim.trainable)
    d_params, d_stats, d_opt = {}, {}, {}
    if discriminator is not None:
        side = getattr(discriminator, "patch_size", 32)  # the U-Net takes any multiple of 8
        d_init = program_cache.jit(discriminator.init, run.program_key, modules=(discriminator,))
        d_vars = d_init(d_key, jnp.zeros((1, side, side, 3)))
        d_params, d_stats = d_vars["params"], d_vars["batch_stats"]
        d_opt = program_cache.jit(tx_d.init, run.program_key)(d_params)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        rng=rng,
        g_params=g_vars["params"],
        g_batch_stats=g_vars.get("batch_stats", {}),
        g_opt_state=program_cache.jit(tx_g.init, run.program_key)(g_vars["params"]),
        d_params=d_params,
        d_batch_stats=d_stats,
        d_opt_state=d_opt,
        learning_rate_scale=jnp.ones((), jnp.float32),
    )
    return state, tx_g


# ------------------------------------------------------------------------------------------------ steps


def make_steps(run: RunSpec, generator, discriminator, vgg_module, tx_g, tx_d):
    """The jitted train step ``(state, batch, aug_params, frozen) -> (state, metrics)`` and the D-only step.

    ``frozen`` holds the variables that are used but never trained (``{"vgg": ...}`` for the perceptual loss, else
    ``{}``). They are an argument rather than captured by the closure: captured arrays would be embedded in the
    compiled program as constants (VGG19's 80 MB of weights copied into every executable built from this step).
    """
    w = run.loss
    scale = run.data.scale
    aug = run.data.augment
    fill = jnp.asarray(jdata.augment_fill(aug))
    degraded = jdata.degradation(run.data)
    g_bn_train = run.optim.generator_bn_train

    def prepare(rng, batch, aug_params):
        """uint8 batch -> augmented, degraded (lr, hr) in [-1, 1]."""
        hr, lr = jdata.to_unit(batch["hr"]), jdata.to_unit(batch["lr"])
        if aug.enabled:
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

    pixel_kind = w.pixel_kind
    pixel_loss = {"mse": losses.pixel_mse, "l1": losses.pixel_l1}[pixel_kind]
    feature_loss = {"mse": losses.feature_mse, "l1": losses.feature_l1}[w.vgg_criterion]
    relativistic = w.gan == "relativistic"

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
        if w.tv:
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
        updates = jax.tree.map(lambda u: u * state.learning_rate_scale, updates)
        params = optax.apply_updates(state.g_params, updates)
        out |= {"g_loss": g_loss, **parts, "psnr_rgb": metrics.psnr((sr + 1) / 2, (hr + 1) / 2, on="rgb").mean()}
        state = state.replace(
            step=state.step + 1, rng=rng, g_params=params, g_batch_stats=g_stats, g_opt_state=opt_state
        )
        return state, out

    def d_only_step(state: TrainState, batch, aug_params, frozen):
        """An extra discriminator pass on a fresh batch (the original study's early-training schedule)."""
        rng, aug_rng = jax.random.split(state.rng)
        lr, hr = prepare(aug_rng, batch, aug_params)
        sr, _ = g_forward(state.g_params, state.g_batch_stats, lr)
        state, out = d_update(state, hr, sr)
        return state.replace(rng=rng), out

    modules = (generator, discriminator, vgg_module)
    return (
        program_cache.jit(train_step, run.program_key, donate_argnums=0, modules=modules),
        program_cache.jit(d_only_step, run.program_key, donate_argnums=0, modules=modules),
    )


def extra_d_passes(optim: OptimSpec, step: int) -> int:
    """The original study's schedule ('study'): max(5 - epoch // 5, 1) discriminator epochs per generator epoch,
    i.e. that many minus one extra passes."""
    if optim.d_passes != "study":
        return 0
    epoch = step // max(1, optim.steps_per_epoch)
    return max(5 - epoch // 5, 1) - 1


@dataclasses.dataclass
class StandardParts:
    """What the standard method trains with, on the host (the caller places ``state`` and ``frozen``)."""

    discriminator: Any
    state: TrainState
    frozen: dict  # the step's ``frozen`` argument: {"vgg": variables} or {}
    train_step: Callable
    d_only_step: Callable


def build_standard(run, generator) -> StandardParts:
    """Discriminator, VGG, optimisers, initial state and the jitted steps of ``make_steps`` for ``run`` (a RunSpec,
    or a config resolved here)."""
    run = as_spec(run)
    discriminator = build_discriminator(run) if run.discriminator is not None else None
    vgg_module, vgg_vars = load_perceptual_vgg(run) if run.uses_vgg else (None, None)
    tx_d = make_optimizer(run.optim.d, None) if discriminator is not None else None
    state, tx_g = initial_state(run, generator, discriminator, tx_d)
    train_step, d_only_step = make_steps(run, generator, discriminator, vgg_module, tx_g, tx_d)
    return StandardParts(
        discriminator=discriminator,
        state=state,
        frozen={"vgg": vgg_vars} if vgg_module is not None else {},
        train_step=train_step,
        d_only_step=d_only_step,
    )


class StandardMethod:
    """SRResNet (mse) / SRGAN (gan) training with TrainState and the jitted steps of ``make_steps``."""

    loss_metric = "g_loss"

    def __init__(self, run: RunSpec, mesh, generator, train_iter):
        parts = build_standard(run, generator)
        self.run, self.parts, self.train_iter = run, parts, train_iter
        self.state = parallel.put_replicated(parts.state, mesh)
        self.frozen = parallel.put_replicated(parts.frozen, mesh)
        per_process = run.batch_size // jax.process_count()
        self.aug_params = parallel.put_batch(jdata.augment_params(run.data.augment, per_process), mesh)
        self.iterators = {"train": train_iter}
        self.plateau = Plateau.from_spec(run.optim.plateau)

    def advance(self, state, step: int):
        extra = extra_d_passes(self.run.optim, step) if self.parts.discriminator is not None else 0
        for _ in range(extra):
            state, _ = self.parts.d_only_step(state, next(self.train_iter), self.aug_params, self.frozen)
        return self.parts.train_step(state, next(self.train_iter), self.aug_params, self.frozen)

    def generator_variables(self, state) -> dict:
        return {"params": state.g_params, "batch_stats": state.g_batch_stats}

    def trained_params(self, state):
        return state.g_params, state.d_params

    def host_scalars(self, state) -> dict:
        return {"learning_rate_scale": float(state.learning_rate_scale)}

    def after_validation(self, state, scores: dict):
        if self.plateau is None:
            return state
        scale = self.plateau.update(scores[self.run.optim.plateau.metric])
        return state.replace(learning_rate_scale=jnp.asarray(scale, jnp.float32))

    def host_state(self) -> dict | None:
        return self.plateau.state_dict() if self.plateau else None

    def restore_host_state(self, saved: dict | None) -> None:
        if self.plateau is not None and saved:
            self.plateau = Plateau(**saved)
