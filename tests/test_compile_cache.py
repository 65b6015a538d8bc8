"""The persistent compilation cache every jsr command turns on: written on the first run, read on the second (the
same outputs), off with --no-compile-cache, and a cache folder that cannot be made is a warning, not a failure. The
trainer's compiled programs (jsr.program_cache) live beside it, under the same rules."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_generator_dir
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    directory = tmp_path_factory.mktemp("weights") / "g"
    make_generator_dir(directory, seed=1, n_feats=32, num_blocks=8, scale=4)  # compiles in well over 0.2 s
    return directory


def cache_env(cache_home):
    """This environment with the cache on, in ``cache_home``/jsr/xla (the suite turns it off for itself)."""
    env = {k: v for k, v in os.environ.items() if k not in ("JSR_NO_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    return env | {"XDG_CACHE_HOME": str(cache_home)}


def upscale(cache_home, weights, photo, out, *extra):
    env = cache_env(cache_home)
    cmd = [sys.executable, "-m", "jsr.upscale", "--weights", weights, "--input", photo, "--output", out, *extra]
    return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300, env=env)


def entries(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_cache_written_then_read_and_switched_off(tmp_path, weights):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(photo)
    cache = tmp_path / "home" / "jsr" / "xla"

    first = upscale(tmp_path / "home", weights, photo, tmp_path / "a.png")
    assert first.returncode == 0, first.stderr[-2000:]
    written = entries(cache)
    assert written, "the first run wrote no cache entry"
    second = upscale(tmp_path / "home", weights, photo, tmp_path / "b.png")
    assert second.returncode == 0, second.stderr[-2000:]
    assert entries(cache) == written  # every program came from the cache: nothing new compiled and stored
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    )

    off = upscale(tmp_path / "other", weights, photo, tmp_path / "c.png", "--no-compile-cache")
    assert off.returncode == 0, off.stderr[-2000:]
    assert not (tmp_path / "other" / "jsr").exists()


def test_unusable_cache_folder_is_a_warning(tmp_path, weights):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(photo)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = upscale(blocker, weights, photo, tmp_path / "out.png")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning: compilation cache off" in result.stderr and (tmp_path / "out.png").is_file()


def train(cache_home, workdir, *extra, steps=2):
    env = cache_env(cache_home)
    cmd = [sys.executable, "-m", "jsr.train", "--config=configs/quickstart.py:tiny", f"--workdir={workdir}"]
    cmd += [f"--config.num_train_steps={steps}", "--config.num_devices=1", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return (workdir / "metrics.jsonl").read_text()


@pytest.mark.slow
@pytest.mark.each_jax
def test_trainer_keeps_compiled_programs_and_trains_the_same(tmp_path):
    home = tmp_path / "home"
    programs_dir = home / "jsr" / "xla" / "programs"
    first = train(home, tmp_path / "a")
    programs = {p.name: p.read_bytes() for p in programs_dir.iterdir()}
    files = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in programs_dir.iterdir()}
    assert any(name.startswith("train_step-") for name in programs) and any(n.startswith("init-") for n in programs)

    # read back, not compiled again: nothing new written, the same metrics to the last bit
    assert train(home, tmp_path / "b") == first
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in programs_dir.iterdir()} == files  # none rewritten
    # the same as a run that traces and compiles everything afresh
    assert train(tmp_path / "off", tmp_path / "c", "--no-compile-cache") == first
    assert not (tmp_path / "off" / "jsr").exists()

    # a damaged program is compiled again and rewritten (then read back); another config is another program
    step_file = next(p for p in programs_dir.iterdir() if p.name.startswith("train_step-"))
    step_file.write_bytes(programs[step_file.name][:100])
    assert train(home, tmp_path / "d") == first
    assert step_file.stat().st_size > 100
    rewritten = (step_file.stat().st_ino, step_file.stat().st_mtime_ns)
    assert train(home, tmp_path / "d2") == first
    assert (step_file.stat().st_ino, step_file.stat().st_mtime_ns) == rewritten
    train(home, tmp_path / "e", "--config.optim.g.learning_rate=0.01")
    assert len([p for p in programs_dir.iterdir() if p.name.startswith("train_step-")]) == 2
