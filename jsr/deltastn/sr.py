"""Delta-STN for super-resolution: tune augmentation magnitudes, weight decay and input noise while training.

``config.deltastn.hypers`` (``RunSpec.deltastn``) maps names to ``(low, high, init)`` (``high`` None: positive,
softplus). Names are the augmentation magnitudes of ``jsr.data.augment.PARAM_SHAPES`` (``translate`` is one fraction
used for both axes), ``weight_decay`` (times the squared norm of every conv kernel, the response included),
``input_noise`` (std of Gaussian noise added to the LR input, in [-1, 1] units) and the degradations of
``jsr.data.degrade`` (``blur_sigma`` of the HR, ``noise_sigma`` on the LR: the LR is then re-made from the (augmented)
HR on device, the untuned one at ``config.data.degrade``'s value). Each example gets its own perturbed values in the
response step; validation batches are never augmented, so the hypergradient flows through the learned response only.
Objective: validation pixel MSE (the PSNR objective)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jsr import archs
from jsr import data as jdata
from jsr.data import degrade
from jsr.deltastn.hyper import Hyper, HyperSpace
from jsr.deltastn.steps import DeltaSTN
from jsr.spec import DeltaSTNSpec, RunSpec

LOSS_HYPERS = ("weight_decay", "input_noise")


def hyper_space(cfg: DeltaSTNSpec) -> HyperSpace:
    hypers = []
    for name, (low, high, init) in cfg.hypers.items():
        if name not in jdata.augment.PARAM_SHAPES and name not in LOSS_HYPERS and name not in degrade.PARAMS:
            raise ValueError(
                f"config.deltastn.hypers: unknown hyperparameter {name!r}; choose from "
                f"{sorted(jdata.augment.PARAM_SHAPES) + list(LOSS_HYPERS) + list(degrade.PARAMS)}"
            )
        kind = "positive" if high is None else "bounded"
        hypers.append(Hyper(name, float(low), None if high is None else float(high), float(init), kind))
    return HyperSpace(hypers)


def make_deltastn(run: RunSpec, generator, general_optimizer) -> DeltaSTN:
    """The SR task as Delta-STN sees it: per-example losses of a ``Net`` (the generator, responded)."""
    cfg, data_cfg = run.deltastn, run.data
    space = hyper_space(cfg)
    augmented = [n for n in space.names if n in jdata.augment.PARAM_SHAPES]
    if augmented and not data_cfg.augment.enabled:
        raise ValueError(f"config.deltastn tunes {augmented}, but config.data.augment.enabled is False")
    fill = jnp.asarray(jdata.augment_fill(data_cfg.augment))
    scale = data_cfg.scale
    degraded = jdata.degradation(data_cfg, tuned=space.names)
    trainable = run.optim.trainable
    bn_train = run.optim.generator_bn_train  # as the standard method: a partly frozen generator keeps its statistics

    model_range = archs.value_range(generator)

    def generate(net, x, train: bool):
        """SR in [-1, 1] of x in [-1, 1], whatever range the architecture works in (leftthomas: [0, 1])."""
        x = archs.convert_range(x, (-1.0, 1.0), model_range)
        sr = net(x, train=True, mutable=["batch_stats"]) if train else net(x, train=False)
        return archs.convert_range(sr, model_range, (-1.0, 1.0))

    def train_loss(net, batch, hp, rng):
        k_aug, k_noise = jax.random.split(rng)
        hr, lr = jdata.to_unit(batch["hr"]), jdata.to_unit(batch["lr"])
        if data_cfg.augment.enabled:
            params = jdata.augment_params(data_cfg.augment, hr.shape[0])
            for name in augmented:  # the tuned magnitudes replace the config's, one value per example
                value = hp[name]
                params[name] = jnp.stack([value, value], axis=-1) if name == "translate" else value
            hr, lr = jdata.augment_batch(k_aug, hr, lr, params, scale=scale, mode=data_cfg.augment.mode, fill=fill)
        if degraded is not None:  # the tuned values replace the config's, one per example
            values = {name: hp.get(name, value) for name, value in degraded.items()}
            lr = degrade.degrade_batch(jax.random.fold_in(k_aug, 1), hr, values, scale=scale)
        x = lr * 2.0 - 1.0
        if "input_noise" in hp:
            x = x + hp["input_noise"][:, None, None, None] * jax.random.normal(k_noise, x.shape)
        sr = generate(net, x, train=bn_train)
        per_example = jnp.mean(jnp.square(sr - (hr * 2.0 - 1.0)), axis=(1, 2, 3))
        metrics = {"pixel_mse": per_example}
        if "weight_decay" in hp:
            per_example = per_example + hp["weight_decay"] * net.weight_sq_norm()
        return per_example, metrics

    def val_loss(net, batch, rng):
        lr, hr = jdata.to_unit(batch["lr"]) * 2.0 - 1.0, jdata.to_unit(batch["hr"]) * 2.0 - 1.0
        return jnp.mean(jnp.square(generate(net, lr, train=False) - hr), axis=(1, 2, 3))

    return DeltaSTN(
        generator,
        space,
        train_loss,
        val_loss,
        general_optimizer=general_optimizer,
        response_optimizer=optax.adam(cfg.response_lr),
        hyper_optimizer=optax.rmsprop(cfg.hyper_lr, decay=0.99),
        scale_optimizer=optax.rmsprop(cfg.scale_lr, decay=0.99),
        tau=cfg.tau,
        init_sigma=cfg.init_sigma,
        warmup_steps=cfg.warmup_steps,
        weight_steps_per_hyper=cfg.weight_steps_per_hyper,
        respond=trainable,  # the frozen layers never move: their response would model nothing
    )
