"""The real trainer on the tiny quickstart config: CLI, devices, processes, resume, signals, GAN, errors."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import make_generator_dir

from jsr.checkpoints import load_model
from jsr.config import load_config_file
from jsr.train import TrainingError, train_and_evaluate


def load_config(repo_root, name="quickstart", variant="tiny"):
    return load_config_file(repo_root / "configs" / f"{name}.py", variant)


def train_cli(repo_root, workdir, *overrides, env=None, wait=True):
    cmd = [
        sys.executable,
        "-m",
        "jsr.train",
        f"--config={repo_root / 'configs' / 'quickstart.py'}:tiny",
        f"--workdir={workdir}",
        *overrides,
    ]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def read_metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def final_params(workdir):
    _, variables = load_model(workdir)
    return variables


def assert_trees_close(a, b, rtol):
    """Every tensor within ``rtol`` of its counterpart, relative to the tensor's norm, floored at 0.1: tensors that
    small after a few steps of these tiny networks are moved by gradients that are ~0 (pre-BatchNorm conv biases:
    ~1e-11; BatchNorm betas ~1e-7; conv01's bias ~1e-6; running means: cancellations of activations of scale ~1),
    so what separates two runs there is summation order, which differs with the device and process count: two
    processes' first-step loss already differs from one process's by 1 ulp (the cross-process all-reduce sums in
    another order; same batches, verified row for row), and three steps grow that to up to 1.5e-7 on such tensors
    with the crops drawn per batch since 2026-11-26 (1e-10 with the earlier crops).

    Per-tensor rather than per-element: Adam divides by sqrt(v), so an element whose gradient is ~0 turns
    summation-order noise (a different device count reduces in a different order) into a visible relative change.
    """
    (paths, xs), ys = zip(*jax.tree_util.tree_flatten_with_path(a)[0], strict=True), jax.tree.leaves(b)
    for path, x, y in zip(paths, xs, ys, strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert np.linalg.norm(x - y) <= rtol * max(np.linalg.norm(x), 0.1), jax.tree_util.keystr(path)


def test_cli_end_to_end(tmp_path, repo_root):
    workdir = tmp_path / "run"
    result = train_cli(repo_root, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 6/6" in result.stdout and "steps/s" in result.stdout and "ETA" in result.stdout
    lines = read_metrics(workdir)
    val = [m for m in lines if "val/psnr_y" in m]
    assert [m["step"] for m in val] == [3, 6]
    assert {"val/psnr_y", "val/ssim_y", "val/bicubic_psnr_y"} <= set(val[-1])
    assert all(np.isfinite(m["g_loss"]) for m in lines if "g_loss" in m)
    assert json.loads((workdir / "config.json").read_text())["num_train_steps"] == 6
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4, 6]
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    module, variables = load_model(workdir)  # the latest generator, as a converted model would load
    assert module.n_feats == 8 and module.bicubic_skip
    assert load_model(workdir / "best")[0].num_blocks == 2
    up = subprocess.run(
        [
            sys.executable,
            "-m",
            "jsr.upscale",
            "--weights",
            str(workdir),
            "--input",
            str(repo_root / "README.md"),
            "--output",
            str(tmp_path / "x.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert up.returncode != 0 and "README.md" in up.stderr  # not an image: a clear error, from a workdir's weights


def test_unknown_override_is_an_error(tmp_path, repo_root):
    result = train_cli(repo_root, tmp_path / "run", "--config.no_such_field=1")
    assert result.returncode != 0 and "no_such_field" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_four_devices_equal_one_device(tmp_path, repo_root):
    """Same global batch on 1 and 4 devices: same losses, parameters and (global) BatchNorm statistics.

    SGD, not Adam: the biases of convs followed by BatchNorm have an exactly zero gradient, so what they receive is
    summation-order noise, which Adam's 1/sqrt(v) normalisation blows up to full-size steps on either device count.
    """
    assert len(jax.devices()) == 4
    results = {}
    for n in (1, 4):
        config = load_config(repo_root)
        config.optim.g.name = "sgd"
        config.optim.g.learning_rate = 0.05
        config.num_devices = n
        config.num_train_steps = 3
        config.log_every_steps = 1
        train_and_evaluate(config, tmp_path / f"d{n}")
        results[n] = (
            [m["g_loss"] for m in read_metrics(tmp_path / f"d{n}") if "g_loss" in m],
            final_params(tmp_path / f"d{n}"),
        )
    np.testing.assert_allclose(results[1][0], results[4][0], rtol=1e-5)
    assert_trees_close(results[1][1], results[4][1], rtol=1e-5)


def wait_for_checkpoint(workdir, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = [p.name for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
        if steps:
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
@pytest.mark.each_jax  # the checkpoint layer touches jax's array APIs
def test_kill_9_then_resume_matches_uninterrupted(tmp_path, repo_root):
    overrides = [
        "--config.num_train_steps=40",
        "--config.checkpoint_every_steps=5",
        "--config.eval_every_steps=40",
        "--config.log_every_steps=5",
    ]
    reference = train_cli(repo_root, tmp_path / "ref", *overrides)
    assert reference.returncode == 0, reference.stderr[-3000:]

    workdir = tmp_path / "killed"
    proc = train_cli(repo_root, workdir, *overrides, wait=False)
    wait_for_checkpoint(workdir, proc)
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())
    assert saved and saved[-1] < 40  # it really died mid-run
    resumed = train_cli(repo_root, workdir, *overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at step {saved[-1]}" in resumed.stdout
    assert_trees_close(final_params(workdir), final_params(tmp_path / "ref"), rtol=1e-6)
    steps = [m["step"] for m in read_metrics(workdir) if "g_loss" in m]
    assert steps == sorted(set(steps))  # the repeated steps were not logged twice


def test_sigterm_saves_and_exits_zero(tmp_path, repo_root):
    workdir = tmp_path / "run"
    proc = train_cli(
        repo_root, workdir, "--config.num_train_steps=400", "--config.checkpoint_every_steps=200", wait=False
    )
    while not (workdir / "metrics.jsonl").exists():  # training is under way
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "received signal" in out
    saved = max(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())
    assert 0 < saved < 400
    assert f"saving step {saved}" in out


@pytest.mark.slow
def test_gan_stage_transfer_learning_moves_only_the_unfrozen_layers(tmp_path, repo_root):
    make_generator_dir(tmp_path / "mse", seed=5, n_feats=8, num_blocks=2, scale=4, bicubic_skip=True)
    config = load_config(repo_root)
    config.stage = "gan"
    config.loss.allow_random_vgg = True  # no converted VGG19 in tests; the loss is shaped right, not meaningful
    config.init_from = str(tmp_path / "mse")
    config.optim.trainable = ("^tail", "^last_conv")
    config.optim.d.learning_rate = 1e-3
    config.log_every_steps = 1
    config.num_train_steps = 4
    config.eval_every_steps = 4
    train_and_evaluate(config, tmp_path / "gan")

    lines = [m for m in read_metrics(tmp_path / "gan") if "d_loss" in m]
    for key in ("d_loss", "g_loss", "adversarial", "vgg"):
        values = [m[key] for m in lines]
        assert len(set(values)) > 1 and all(np.isfinite(values)), key
    before, after = final_params(tmp_path / "mse"), final_params(tmp_path / "gan")
    moved = set()
    for path, a in jax.tree_util.tree_flatten_with_path(before)[0]:
        b = after
        for k in path:
            b = b[k.key]
        if not np.array_equal(a, b):
            moved.add(path[1].key)
    # the upsamplers (conv + PReLU, the source's `tail`) and last_conv moved; nothing else, no BN statistic either
    assert moved == {"tail_0", "tail_0_prelu", "tail_1", "tail_1_prelu", "last_conv"}


def test_gan_step_takes_vgg_as_an_argument_not_as_baked_in_constants(repo_root):
    """Arrays captured by the step's closure become constants embedded in the program: the jaxpr of the real gan
    step must capture nothing of a parameter's size, and must read the VGG kernels from ``frozen``."""
    from jsr import data as jdata
    from jsr.train import build_generator, build_standard

    config = load_config(repo_root)
    config.stage = "gan"
    config.loss.allow_random_vgg = True
    parts = build_standard(config, build_generator(config))
    assert parts.discriminator is not None and set(parts.frozen) == {"vgg"}
    hr_side, lr_side = config.data.patch_size * config.data.scale, config.data.patch_size
    batch = {
        "hr": np.zeros((config.batch_size, hr_side, hr_side, 3), np.uint8),
        "lr": np.zeros((config.batch_size, lr_side, lr_side, 3), np.uint8),
    }
    aug = jdata.augment_params(config.data.augment, config.batch_size)
    closed = jax.make_jaxpr(parts.train_step)(parts.state, batch, aug, parts.frozen)
    biggest = max((np.size(c) for c in closed.consts), default=0)
    assert biggest < 1000, f"the step captured a constant of {biggest} elements"
    with pytest.raises(KeyError, match="vgg"):
        jax.make_jaxpr(parts.train_step)(parts.state, batch, aug, {})


def test_missing_vgg_and_init_from_are_clear_errors(tmp_path, repo_root):
    config = load_config(repo_root)
    config.stage = "gan"
    with pytest.raises(TrainingError, match="convert_torch_weights.py --model vgg19"):
        train_and_evaluate(config, tmp_path / "a")
    config = load_config(repo_root)
    config.init_from = str(tmp_path / "nowhere")
    with pytest.raises(TrainingError, match="does not exist"):
        train_and_evaluate(config, tmp_path / "b")


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, repo_root):
    config = load_config(repo_root)
    config.num_train_steps = 20
    config.checkpoint_every_steps = 1
    config.log_every_steps = 1
    config.optim.g.learning_rate = 1e4
    config.optim.g.schedule = "constant"
    config.data.augment.enabled = False
    with pytest.raises(TrainingError, match="last good checkpoint"):
        train_and_evaluate(config, tmp_path / "run")
    _, variables = load_model(tmp_path / "run")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.each_jax
def test_two_processes_equal_one_process(tmp_path, repo_root):
    # SGD for the reason given in test_four_devices_equal_one_device
    steps = [
        "--config.num_train_steps=3",
        "--config.log_every_steps=1",
        "--config.eval_every_steps=3",
        "--config.optim.g.name=sgd",
        "--config.optim.g.learning_rate=0.05",
        "--config.eval_max_images=3",  # validation sharded 2 + 1 over the processes
    ]
    single = train_cli(repo_root, tmp_path / "single", *steps)
    assert single.returncode == 0, single.stderr[-3000:]
    port = free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [
        train_cli(
            repo_root,
            tmp_path / "multi",
            *steps,
            "--config.distributed.enabled=True",
            f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            "--config.distributed.num_processes=2",
            f"--config.distributed.process_id={i}",
            env=env,
            wait=False,
        )
        for i in range(2)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    assert "on 4 device(s)" in outputs[0][0]  # one global mesh over both processes' devices
    losses = lambda w: [m["g_loss"] for m in read_metrics(w) if "g_loss" in m]  # noqa: E731
    np.testing.assert_allclose(losses(tmp_path / "multi"), losses(tmp_path / "single"), rtol=1e-5)
    assert_trees_close(final_params(tmp_path / "multi"), final_params(tmp_path / "single"), rtol=1e-5)
    val = lambda w: [(m["val/psnr_y"], m["val/ssim_y"]) for m in read_metrics(w) if "val/psnr_y" in m]  # noqa: E731
    np.testing.assert_allclose(val(tmp_path / "multi"), val(tmp_path / "single"), atol=1e-4)  # dB / SSIM
