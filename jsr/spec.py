"""A training run resolved ONCE from its config (``resolve``): small frozen dataclasses that the trainer, the
optimisers and Delta-STN read. Every default is in ``jsr.config`` (``base_config``, ``default_data_config``);
every check is here, with a message naming the field; nothing downstream reads the raw ConfigDict.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jsr import archs, checkpoints, onednn
from jsr.errors import RunFailure, UserError
from jsr.ops.conv import resolve_conv

STAGES = ("mse", "gan")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
LOSS_CHOICES = {"pixel_kind": ("mse", "l1"), "vgg_criterion": ("mse", "l1"), "gan": ("standard", "relativistic")}
DISCRIMINATORS = {"srgan": "srgan_discriminator", "unet_sn": "unet_discriminator_sn"}
D_PASSES = ("one", "study")
POSITIVE = ("num_train_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "batch_size")


class TrainingError(UserError):
    """A configuration or input problem; the message names the field and says what to do."""


class TrainingDiverged(TrainingError, RunFailure):
    """A loss or parameter became non-finite: the run itself failed (exit code 1)."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The generator: a registered architecture, its constructor arguments (what ``jsr_model.json`` records), the
    compute dtype and the convolution path resolved for this backend and method."""

    arch: str
    config: dict[str, Any]
    compute_dtype: str
    conv: str

    @property
    def dtype(self):
        return COMPUTE_DTYPES[self.compute_dtype]

    def build(self):
        return archs.get(self.arch).build(self.config | {"dtype": self.dtype, "conv": self.conv})


@dataclasses.dataclass(frozen=True)
class DiscriminatorSpec:
    arch: str  # a DISCRIMINATORS key
    n_feats: int
    patch_size: int  # the HR side the SRGAN discriminator is built for (the U-Net takes any multiple of 8)
    conv: str  # its convolution path, resolved like the generator's for its own architecture


@dataclasses.dataclass(frozen=True)
class LossSpec:
    pixel: float
    pixel_kind: str
    vgg_criterion: str
    gan: str
    vgg: float
    vgg_tap: str
    adversarial: float
    tv: float
    vgg_weights: str
    allow_random_vgg: bool


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    name: str
    learning_rate: float
    momentum: float
    schedule: str
    step_size: int
    gamma: float
    decay_steps: int
    b1: float
    b2: float
    weight_decay: float
    clip_grad_norm: float


@dataclasses.dataclass(frozen=True)
class PlateauSpec:
    enabled: bool
    metric: str
    mode: str
    factor: float
    patience: int
    min_scale: float


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    g: OptimizerSpec
    d: OptimizerSpec
    trainable: tuple[str, ...]  # regexes over generator parameter paths; () = everything
    freeze_frozen_batch_stats: bool
    plateau: PlateauSpec
    d_passes: str
    steps_per_epoch: int

    @property
    def generator_bn_train(self) -> bool:
        """BatchNorm statistics of the generator update in training unless layers are frozen and kept frozen."""
        return not (self.trainable and self.freeze_frozen_batch_stats)


@dataclasses.dataclass(frozen=True)
class DeltaSTNSpec:
    enabled: bool
    hypers: dict[str, tuple]  # name -> (low, high, init)
    warmup_steps: int
    weight_steps_per_hyper: int
    tau: float
    init_sigma: float
    response_lr: float
    hyper_lr: float
    scale_lr: float
    val_batch_size: int  # resolved: batch_size when the config says 0


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
    enabled: bool
    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None


@dataclasses.dataclass(frozen=True)
class RunSpec:
    seed: int
    stage: str
    num_train_steps: int
    batch_size: int
    log_every_steps: int
    eval_every_steps: int
    checkpoint_every_steps: int
    keep_checkpoints: int
    eval_max_images: int
    eval_images: int
    init_from: str
    num_devices: int
    distributed: DistributedSpec
    cpu_onednn: bool  # XLA hands this process's CPU convolutions to oneDNN (jsr.onednn)
    model: ModelSpec
    discriminator: DiscriminatorSpec | None  # None: no adversarial loss
    loss: LossSpec
    optim: OptimSpec
    data: ml_collections.FrozenConfigDict  # jsr.data's fields (jsr.config.default_data_config), read-only
    deltastn: DeltaSTNSpec
    config_json: str  # the config as given, for the workdir's config.json

    @property
    def uses_vgg(self) -> bool:
        return self.stage == "gan" and bool(self.loss.vgg)

    @property
    def program_key(self) -> str:
        """What the run's compiled programs depend on (``jsr.program_cache``): the config as given and what it
        resolved to on this machine ('auto' convolutions differ between CPUs with and without bf16 instructions)."""
        d_conv = self.discriminator.conv if self.discriminator else None
        resolved = {"conv": self.model.conv, "discriminator_conv": d_conv, "cpu_onednn": self.cpu_onednn}
        return f"{self.config_json}\n{json.dumps(resolved, sort_keys=True)}"


def _fields(cls, section: ml_collections.ConfigDict, **resolved):
    """``cls`` from the same-named fields of ``section`` (all present: base_config has every one)."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in resolved]
    return cls(**{name: section[name] for name in names}, **resolved)


def resolve(config: ml_collections.ConfigDict) -> RunSpec:
    """The run ``config`` describes, checked; a TrainingError names the first bad field."""
    try:
        return _resolve(config)
    except (KeyError, AttributeError) as e:  # a config not built on base_config
        missing = str(e.args[0] if e.args else e).splitlines()[0]
        raise TrainingError(
            f"the config has no field {missing}: start it from jsr.config.base_config(), which has every field"
        ) from e


def _resolve(config: ml_collections.ConfigDict) -> RunSpec:
    if config.stage not in STAGES:
        raise TrainingError(f"config.stage {config.stage!r}: choose from {STAGES}")
    for name in POSITIVE:
        if config[name] <= 0:
            raise TrainingError(f"config.{name} must be positive, got {config[name]}")
    for field, choices in LOSS_CHOICES.items():
        if config.loss[field] not in choices:
            raise TrainingError(f"config.loss.{field}={config.loss[field]!r}: choose from {choices}")
    if config.optim.d_passes not in D_PASSES:
        raise TrainingError(f"config.optim.d_passes={config.optim.d_passes!r}: choose from {D_PASSES}")
    if config.compute_dtype not in COMPUTE_DTYPES:
        raise TrainingError(f"config.compute_dtype {config.compute_dtype!r}: choose from {sorted(COMPUTE_DTYPES)}")
    try:  # before anything starts JAX's backend, which reads the flags once
        cpu_onednn = onednn.configure(config.cpu_onednn, config.compute_dtype)
    except ValueError as e:
        raise TrainingError(f"config.{e}") from None
    deltastn = _fields(
        DeltaSTNSpec,
        config.deltastn,
        hypers={name: tuple(v) for name, v in config.deltastn.hypers.items()},
        val_batch_size=config.deltastn.val_batch_size or config.batch_size,
    )
    plateau = _fields(PlateauSpec, config.optim.plateau)
    if deltastn.enabled:
        _check_deltastn(config, plateau)
    optim = _fields(
        OptimSpec,
        config.optim,
        g=_fields(OptimizerSpec, config.optim.g),
        d=_fields(OptimizerSpec, config.optim.d),
        trainable=tuple(config.optim.trainable),
        plateau=plateau,
    )
    return RunSpec(
        **{
            name: config[name]
            for name in (
                "seed",
                "stage",
                "num_train_steps",
                "batch_size",
                "log_every_steps",
                "eval_every_steps",
                "checkpoint_every_steps",
                "keep_checkpoints",
                "eval_max_images",
                "eval_images",
                "init_from",
                "num_devices",
            )
        },
        distributed=distributed_spec(config),
        cpu_onednn=cpu_onednn and jax.default_backend() == "cpu",  # the flags touch only the CPU backend
        model=_model(config, deltastn.enabled),
        discriminator=_discriminator(config, deltastn.enabled),
        loss=_fields(LossSpec, config.loss),
        optim=optim,
        data=ml_collections.FrozenConfigDict(config.data),
        deltastn=deltastn,
        config_json=config.to_json_best_effort(indent=2),
    )


def distributed_spec(config: ml_collections.ConfigDict) -> DistributedSpec:
    """Readable before JAX starts (``jax.distributed.initialize`` must come first; ``resolve`` asks the backend)."""
    d = config.distributed
    return DistributedSpec(
        enabled=bool(d.enabled),
        coordinator_address=d.coordinator_address or None,
        num_processes=d.num_processes or None,
        process_id=d.process_id if d.process_id >= 0 else None,
    )


def _check_deltastn(config: ml_collections.ConfigDict, plateau: PlateauSpec) -> None:
    if config.stage != "mse":
        raise TrainingError("config.deltastn needs stage 'mse' (the validation objective is pixel MSE)")
    if plateau.enabled:
        raise TrainingError("config.deltastn tunes its own hyperparameters: disable config.optim.plateau")
    if config.model.conv not in ("auto", "xla"):
        raise TrainingError(
            f"config.deltastn needs config.model.conv='xla' (got {config.model.conv!r}): the fast conv has no "
            "forward-mode (jvp) rule, and the response is linearised around XLA's exact convolutions"
        )


def _conv(config: ml_collections.ConfigDict, forward_mode: bool, arch_name: str) -> str:
    """config.model.conv resolved for this backend, method, dtype and architecture ('auto' is 'winograd' on a CPU
    only for a float32 model whose ``cpu_winograd`` is on); 'winograd' is 'fast' for a discriminator whose
    ``cpu_winograd`` is off (the U-Net discriminator: not measured with Winograd)."""
    arch = archs.get(arch_name)
    try:
        library_convs = onednn.takes_convs(config.compute_dtype)
        pays = arch.winograd_pays(config.compute_dtype)
        conv = resolve_conv(config.model.conv, jax.default_backend(), forward_mode, library_convs, pays)
    except ValueError as e:
        raise TrainingError(f"config.model.{e}") from e
    return "fast" if conv == "winograd" and arch.role == "discriminator" and not arch.cpu_winograd else conv


def _model(config: ml_collections.ConfigDict, forward_mode: bool) -> ModelSpec:
    """config.model.arch '' takes init_from's architecture and arguments (config.model.n_feats etc. are then not
    used); without init_from, srresnet is built from config.model, another architecture from config.model.options."""
    if "scale" in config.model and config.model.scale != config.data.scale:
        raise TrainingError(
            f"config.model.scale={config.model.scale} differs from config.data.scale={config.data.scale}; "
            "set them equal"
        )
    conv = functools.partial(_conv, config, forward_mode)
    arch, scale = config.model.arch, config.data.scale
    if config.init_from and not arch:
        try:
            description = checkpoints.read_description(config.init_from)
        except checkpoints.ModelFileError as e:
            raise TrainingError(f"config.init_from: {e}") from e
        name = archs.resolve(description.get("arch", description["kind"])).name
        options = dict(description["config"])
        if options.get("scale", scale) != scale:
            raise TrainingError(
                f"config.init_from is a x{options['scale']} {name}, but config.data.scale is {scale}; set them equal"
            )
        return ModelSpec(name, options, config.compute_dtype, conv(name))
    if arch not in ("", "srresnet"):
        if arch not in archs.REGISTRY or archs.get(arch).role != "generator":
            known = sorted(name for name, a in archs.REGISTRY.items() if a.role == "generator")
            raise TrainingError(f"config.model.arch={arch!r}: not a registered generator; choose from {known}")
        return ModelSpec(arch, {**config.model.options.to_dict(), "scale": scale}, config.compute_dtype, conv(arch))
    m = config.model
    options = {
        "n_feats": m.n_feats,
        "num_blocks": m.num_blocks,
        "scale": scale,
        "channels": 3,
        "bicubic_skip": bool(m.bicubic_skip),
    }
    return ModelSpec("srresnet", options, config.compute_dtype, conv("srresnet"))


def _discriminator(config: ml_collections.ConfigDict, forward_mode: bool) -> DiscriminatorSpec | None:
    """SRGAN-PyTorch's discriminator at a fixed patch size, or Real-ESRGAN's U-Net (any size); None without GAN."""
    arch = config.discriminator.arch
    if arch not in DISCRIMINATORS:
        raise TrainingError(f"config.discriminator.arch={arch!r}: choose from {tuple(DISCRIMINATORS)}")
    if config.stage != "gan" or not config.loss.adversarial:
        return None
    patch = config.discriminator.patch_size
    if config.data.patch_size:
        patch = config.data.scale * config.data.patch_size
    elif arch == "srgan" and not patch:
        raise TrainingError("whole-image GAN training needs config.discriminator.patch_size (the HR image side)")
    conv = _conv(config, forward_mode, DISCRIMINATORS[arch])
    return DiscriminatorSpec(arch, config.discriminator.n_feats, patch, conv)


def as_spec(run) -> RunSpec:
    """``run`` itself, or the RunSpec of a config (for Python callers holding a ConfigDict)."""
    return run if isinstance(run, RunSpec) else resolve(run)
