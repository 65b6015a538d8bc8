"""The run description: resolved once from a config, frozen, every bad field named; the CLI's overrides typed by
the field they set."""

from __future__ import annotations

import dataclasses

import pytest

from jsr.config import load_config_file
from jsr.ops.conv import resolve_conv
from jsr.spec import RunSpec, TrainingError, resolve
from jsr.train.cli import OverrideError, apply_override, load_config


@pytest.fixture
def config(repo_root):
    return load_config(f"{repo_root / 'configs' / 'quickstart.py'}:tiny")


def test_resolve_gives_a_frozen_description_with_the_config_values(config):
    run = resolve(config)
    assert isinstance(run, RunSpec) and run.model.arch == "srresnet" and run.model.conv == "fast"
    assert run.model.config == {"n_feats": 8, "num_blocks": 2, "scale": 4, "channels": 3, "bicubic_skip": True}
    assert (run.optim.g.name, run.optim.g.learning_rate, run.optim.g.momentum) == ("adam", 5e-4, 0.9)
    assert run.discriminator is None and run.deltastn.val_batch_size == run.batch_size == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.optim.g.learning_rate = 1.0
    with pytest.raises(AttributeError):  # the data section is read-only too
        run.data.scale = 2


def test_winograd_follows_each_networks_measured_preference(config):
    config.stage, config.model.conv = "gan", "winograd"
    run = resolve(config)
    assert (run.model.conv, run.discriminator.arch, run.discriminator.conv) == ("winograd", "srgan", "winograd")
    config.model.conv = "auto"
    assert (resolve(config).model.conv, resolve(config).discriminator.conv) == ("winograd", "winograd")  # on a CPU
    config.discriminator.arch = "unet_sn"  # declares no Winograd: keeps 'fast' under 'winograd' and 'auto'
    assert resolve(config).discriminator.conv == "fast"
    config.model.conv = "winograd"
    assert resolve(config).discriminator.conv == "fast"
    config.model.conv = "xla"
    assert resolve(config).discriminator.conv == "xla"
    with pytest.raises(ValueError, match="conv='winograd' is a CPU path"):
        resolve_conv("winograd", "gpu")


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("optim.d_passes", "seed", "config.optim.d_passes='seed'"),
        ("loss.pixel_kind", "l2", "config.loss.pixel_kind='l2'"),
        ("compute_dtype", "int8", "config.compute_dtype 'int8'"),
        ("discriminator.arch", "patchgan", "config.discriminator.arch='patchgan'"),
        ("model.arch", "nope", "config.model.arch='nope'"),
        ("log_every_steps", 0, "config.log_every_steps must be positive"),
    ],
)
def test_every_bad_field_is_named(config, field, value, needle):
    *parents, leaf = field.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[leaf] = value
    with pytest.raises(TrainingError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        resolve(config)


def test_delta_stn_checks_live_in_the_resolution(repo_root):
    config = load_config_file(repo_root / "configs" / "quickstart_deltastn.py", "tiny")
    assert resolve(config).model.conv == "xla"  # 'auto' under forward mode
    config.model.conv = "fast"
    with pytest.raises(TrainingError, match="config.deltastn needs config.model.conv='xla'"):
        resolve(config)


def test_overrides_take_the_type_of_the_field(config):
    apply_override(config, "--config.batch_size=12")
    apply_override(config, "--config.optim.g.learning_rate=3")  # an int literal for a float field
    apply_override(config, "--config.data.augment.enabled=true")
    apply_override(config, "--config.optim.trainable=tail")  # one pattern for a tuple field
    apply_override(config, "--config.init_from=runs/a:b")  # strings as given, colons included
    apply_override(config, "--config.data.augment.translate=(0.1, 0.2)")
    assert (config.batch_size, config.optim.g.learning_rate, config.data.augment.enabled) == (12, 3.0, True)
    assert (config.optim.trainable, config.init_from, config.data.augment.translate) == (
        ("tail",),
        "runs/a:b",
        (0.1, 0.2),
    )


@pytest.mark.parametrize(
    "argument, needle",
    [
        ("--config.batch_sise=3", "unknown config field --config.batch_sise; did you mean --config.batch_size?"),
        ("--config.optim.g.nam=sgd", "did you mean --config.optim.g.name?"),
        ("--config.batch_size=twelve", "--config.batch_size=twelve: not a int literal"),
        ("--config.data.augment.enabled=maybe", "expected True or False"),
        ("--config.optim=adam", "--config.optim=adam: a section takes a dict literal"),
        ("--config.batch_size", "expected --config.FIELD=VALUE"),
    ],
)
def test_bad_overrides_are_one_sentence(config, argument, needle):
    with pytest.raises(OverrideError) as raised:
        apply_override(config, argument)
    assert needle in str(raised.value) and "\n" not in str(raised.value)


def test_a_section_takes_a_dict_and_the_space_and_bare_forms_work(config):
    from jsr.train.cli import override_arguments

    rest, overrides = override_arguments(
        ["--workdir=w", "--config.model.options", "{'num_block': 6}", "--config.data.augment.enabled", "--x"]
    )
    assert rest == ["--workdir=w", "--x"]
    assert overrides == ["--config.model.options={'num_block': 6}", "--config.data.augment.enabled=True"]
    for override in overrides:
        apply_override(config, override)
    apply_override(config, "--config.data.skip_bad_files=t")
    assert config.model.options.to_dict() == {"num_block": 6} and config.data.augment.enabled
    assert config.data.skip_bad_files is True
    with pytest.raises(OverrideError, match="quote each element"):
        apply_override(config, "--config.optim.trainable=^tail,^last_conv")
    with pytest.raises(OverrideError, match="a section takes a dict literal"):
        apply_override(config, "--config.model.options=6")


def test_a_config_missing_a_field_is_one_sentence(config):
    config.unlock()
    del config.loss["tv"]
    with pytest.raises(TrainingError, match="the config has no field 'tv': start it from jsr.config.base_config"):
        resolve(config)


def test_a_resolved_spec_cannot_start_a_distributed_run(config, tmp_path):
    from jsr.train import train_and_evaluate

    config.distributed.enabled = True
    with pytest.raises(TrainingError, match="needs the config itself, not its RunSpec"):
        train_and_evaluate(resolve(config), tmp_path / "run")
