"""Optimisers for training: Adam(W) with schedules, freezing by parameter-path patterns, reduce-on-plateau.

Freezing uses ``optax.multi_transform`` with ``optax.set_to_zero`` for frozen leaves (no optimizer state is
allocated for them). Reduce-on-plateau watches a VALIDATION metric, which is only known on the host at eval
time, so it lives on the host (``Plateau``) and enters the jitted step as one scalar that scales the updates;
for Adam that is exactly scaling the learning rate.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax
import optax

from jsr.spec import OptimizerSpec, PlateauSpec

TRAIN, FROZEN = "train", "frozen"


def path_name(path: tuple) -> str:
    """'tail_0/conv/kernel' for a jax tree path."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def trainable_labels(params: Any, patterns: Sequence[str]) -> Any:
    """'train' for leaves whose path matches any regex in ``patterns`` (all leaves when empty), else 'frozen'."""
    compiled = [re.compile(p) for p in patterns]
    if not compiled:
        return jax.tree.map(lambda _: TRAIN, params)
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: TRAIN if any(c.search(path_name(path)) for c in compiled) else FROZEN, params
    )
    if TRAIN not in jax.tree.leaves(labels):
        names = sorted({path_name(p).split("/")[0] for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]})
        raise ValueError(f"config.optim.trainable {list(patterns)} matches no parameter; top-level names: {names}")
    return labels


def learning_rate_schedule(cfg: OptimizerSpec) -> optax.Schedule:
    """``cfg.schedule``: 'constant' | 'step' (x ``gamma`` every ``step_size`` steps, PyTorch's StepLR) | 'cosine'."""
    lr = float(cfg.learning_rate)
    kind = cfg.schedule
    if kind == "constant":
        return optax.constant_schedule(lr)
    if kind == "step":
        return optax.exponential_decay(
            lr, transition_steps=int(cfg.step_size), decay_rate=float(cfg.gamma), staircase=True
        )
    if kind == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=int(cfg.decay_steps))
    raise ValueError(f"unknown learning-rate schedule {kind!r}; choose constant, step or cosine")


def make_optimizer(cfg: OptimizerSpec, params: Any, trainable: Sequence[str] = ()) -> optax.GradientTransformation:
    """``cfg.name``: 'adam' (AdamW when ``cfg.weight_decay`` > 0) or 'sgd' (with ``cfg.momentum``), on the trainable
    leaves; frozen leaves never move."""
    schedule = learning_rate_schedule(cfg)
    weight_decay = float(cfg.weight_decay)
    name = cfg.name
    if name == "adam":
        b1, b2 = float(cfg.b1), float(cfg.b2)
        if weight_decay > 0:
            base = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay)
        else:
            base = optax.adam(schedule, b1=b1, b2=b2)
    elif name == "sgd":
        base = optax.sgd(schedule, momentum=float(cfg.momentum) or None)
        if weight_decay > 0:
            base = optax.chain(optax.add_decayed_weights(weight_decay), base)
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose adam or sgd")
    if cfg.clip_grad_norm:
        base = optax.chain(optax.clip_by_global_norm(float(cfg.clip_grad_norm)), base)
    if not trainable:
        return base
    return optax.multi_transform({TRAIN: base, FROZEN: optax.set_to_zero()}, trainable_labels(params, trainable))


@dataclasses.dataclass
class Plateau:
    """PyTorch's ReduceLROnPlateau (relative threshold), on the host; ``scale`` multiplies the learning rate."""

    mode: str = "max"  # 'max' for PSNR, 'min' for losses
    factor: float = 0.5
    patience: int = 10  # evaluations without improvement before reducing
    threshold: float = 1e-4
    min_scale: float = 0.0
    scale: float = 1.0
    best: float | None = None
    bad_evals: int = 0

    def update(self, value: float) -> float:
        if self.best is None or self._better(value, self.best):
            self.best, self.bad_evals = float(value), 0
        else:
            self.bad_evals += 1
            if self.bad_evals > self.patience:
                self.scale = max(self.scale * self.factor, self.min_scale)
                self.bad_evals = 0
        return self.scale

    def _better(self, value: float, best: float) -> bool:
        if self.mode == "max":
            return value > best * (1 + self.threshold) if best > 0 else value > best * (1 - self.threshold)
        return value < best * (1 - self.threshold) if best > 0 else value < best * (1 + self.threshold)

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_spec(cls, spec: PlateauSpec) -> Plateau | None:
        if not spec.enabled:
            return None
        return cls(mode=spec.mode, factor=float(spec.factor), patience=int(spec.patience), min_scale=spec.min_scale)
