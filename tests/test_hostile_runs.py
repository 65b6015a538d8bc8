"""A careless or hostile user's runs: outputs that are inputs, overwrites of foreign folders, kills mid-replace, two
trainers on one workdir, damaged checkpoints, leftovers of killed runs, permissions, one-line errors, exit codes."""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_generator_dir
from PIL import Image

from jsr import atomic, checkpoints, workdir
from jsr.config import load_config_file
from jsr.train import TrainingDiverged, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
TINY = f"--config={ROOT / 'configs' / 'quickstart.py'}:tiny"


def cli(module, *args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def one_line_error(result, code, *needles):
    """Exit ``code``, stderr is a single ``error:`` line holding every needle, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    directory = tmp_path_factory.mktemp("weights") / "g"
    make_generator_dir(directory, seed=1, n_feats=8, num_blocks=1, scale=4)
    return directory


def write_photo(path: Path, size=(12, 10), seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------------- 1: outputs = inputs


def test_upscale_refuses_to_replace_its_input_file_folder_or_symlink(tmp_path, weights):
    photo = write_photo(tmp_path / "same" / "photo.png")
    folder = tmp_path / "d"
    for k in range(2):
        write_photo(folder / f"p{k}.png", seed=k)
    write_photo(folder / "x.jpg", seed=5)  # x.jpg -> x.png: not an input, fine
    link = tmp_path / "link.png"
    link.symlink_to(photo)
    before = {p: digest(p) for p in [photo, *folder.iterdir()]}

    one_line_error(cli("jsr.upscale", "--weights", weights, "--input", photo, "--output", photo), 2, "photo.png")
    one_line_error(cli("jsr.upscale", "--weights", weights, "--input", folder, "--output", folder), 2, "--overwrite")
    one_line_error(cli("jsr.upscale", "--weights", weights, "--input", link, "--output", photo), 2, "link.png")
    assert {p: digest(p) for p in [photo, *folder.iterdir()]} == before  # no file replaced, none added

    allowed = cli("jsr.upscale", "--weights", weights, "--input", photo, "--output", photo, "--overwrite-inputs")
    assert allowed.returncode == 0, allowed.stderr
    assert Image.open(photo).size == (40, 48)  # replaced on request only


def test_upscale_into_a_subfolder_of_the_input_does_not_eat_its_own_outputs(tmp_path, weights):
    folder = tmp_path / "d"
    write_photo(folder / "a.png")
    for _ in range(2):
        result = cli("jsr.upscale", "--weights", weights, "--input", folder, "--output", folder / "x4")
        assert result.returncode == 0, result.stderr
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == ["a.png", "x4/a.png"]


# ------------------------------------------------------------------------- 2: replacing a model directory safely


def test_overwrite_never_deletes_a_folder_that_is_not_a_model(tmp_path, weights):
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("my notes")
    make_generator_dir(target / "other_model", seed=2, n_feats=4, num_blocks=1, scale=4)
    before = tree_digest(target)
    _, variables = checkpoints.load_model(weights)
    with pytest.raises(checkpoints.ModelFileError, match="not a jsr model directory.*notes.txt"):
        checkpoints.save_model(target, "generator", {}, variables, overwrite=True)
    assert tree_digest(target) == before


def test_overwrite_replaces_a_model_directory(tmp_path):
    target = tmp_path / "model"
    make_generator_dir(target, seed=1, n_feats=4, num_blocks=1, scale=4)
    module, variables = make_generator_dir(tmp_path / "new", seed=2, n_feats=4, num_blocks=1, scale=4)
    config = {"n_feats": 4, "num_blocks": 1, "scale": 4}
    checkpoints.save_model(target, "generator", config, variables, overwrite=True)
    _, loaded = checkpoints.load_model(target)
    np.testing.assert_array_equal(
        loaded["params"]["conv01"]["conv"]["kernel"], variables["params"]["conv01"]["conv"]["kernel"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "new"]  # no staging or old copies left


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from jsr import atomic, checkpoints
    target, source, point, exchange = sys.argv[1:5]
    if exchange == "no":
        atomic._exchange = lambda a, b: False  # the rename-aside path of systems without renameat2
    atomic.fault_point = lambda where: os._exit(9) if where == point else None
    _, variables = checkpoints.load_model(source)
    checkpoints.save_model(target, "generator", {"n_feats": 4, "num_blocks": 1, "scale": 4}, variables, overwrite=True)
    """
)


@pytest.mark.parametrize(
    "point,exchange", [("exchanged", "yes"), ("aside", "no"), ("replaced", "no")], ids=["exchange", "aside", "moved"]
)
def test_a_kill_at_any_step_of_a_replacement_leaves_a_whole_model(tmp_path, point, exchange):
    old = tmp_path / "model"
    make_generator_dir(old, seed=1, n_feats=4, num_blocks=1, scale=4)
    _, new_variables = make_generator_dir(tmp_path / "new", seed=2, n_feats=4, num_blocks=1, scale=4)
    old_kernel = checkpoints.load_model(old)[1]["params"]["conv01"]["conv"]["kernel"]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(old), str(tmp_path / "new"), point, exchange], capture_output=True
    )
    assert killed.returncode == 9, killed.stderr.decode()[-2000:]
    notes = atomic.heal(old)  # what the next save or load does first
    kernel = checkpoints.load_model(old)[1]["params"]["conv01"]["conv"]["kernel"]
    expected = old_kernel if point == "aside" else new_variables["params"]["conv01"]["conv"]["kernel"]
    np.testing.assert_array_equal(kernel, expected)
    if point == "aside":
        assert any("restored" in n for n in notes), notes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "new"], notes


# ------------------------------------------------------------------------------- 3: one trainer per workdir


def test_a_second_trainer_on_a_busy_workdir_is_refused_naming_the_pid(tmp_path):
    run = tmp_path / "run"
    held = workdir.lock(run)
    try:
        result = cli("jsr.train", TINY, f"--workdir={run}")
    finally:
        held.close()
    one_line_error(result, 2, f"PID {os.getpid()}", str(run))
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written by the refused run


def test_the_lock_dies_with_its_process_even_on_kill_9(tmp_path):
    run = tmp_path / "run"
    script = f"from jsr import workdir; from pathlib import Path; h = workdir.lock(Path({str(run)!r}))"
    holder = subprocess.Popen(
        [sys.executable, "-c", script + "; print('held', flush=True); import time; time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir.WorkdirBusy, match=f"PID {holder.pid}"):
        workdir.lock(run)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    workdir.lock(run).close()  # free again: no stale lock to clear by hand


# ---------------------------------------------------------------------- 8, 9, 11: the trainer's failures


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny run with checkpoints at steps 2, 4 and 6."""
    run = tmp_path_factory.mktemp("trained") / "run"
    result = cli("jsr.train", TINY, f"--workdir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4", "6"]
    return run


def copy_run(run: Path, to: Path) -> Path:
    subprocess.run(["cp", "-r", str(run), str(to)], check=True)
    return to


def damage(step_dir: Path) -> None:
    """Truncate the biggest data file of a checkpoint step, as a full disk or a bad copy would."""
    biggest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as f:
        f.truncate(100)


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_good_one(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    damage(run / "checkpoints" / "6")
    before = (run / "checkpoints" / "6").stat().st_size
    result = cli("jsr.train", TINY, f"--workdir={run}", "--config.num_train_steps=8")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "checkpoint step 6 cannot be read" in result.stdout and "resuming at step 4/8" in result.stdout
    assert (run / "unreadable_checkpoints" / "6").is_dir() and before  # set aside, not deleted
    assert "8" in {p.name for p in (run / "checkpoints").iterdir()}


def test_every_checkpoint_damaged_stops_naming_the_steps(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    for step in ("2", "4", "6"):
        damage(run / "checkpoints" / step)
    before = tree_digest(run / "checkpoints")
    one_line_error(cli("jsr.train", TINY, f"--workdir={run}"), 2, "step 6", "step 2", "start the run over")
    assert tree_digest(run / "checkpoints") == before


def test_resuming_with_another_model_shape_says_so(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    before = tree_digest(run / "checkpoints")
    result = cli("jsr.train", TINY, f"--workdir={run}", "--config.model.n_feats=16")
    one_line_error(result, 2, "other model shapes", "config.json")
    assert tree_digest(run / "checkpoints") == before


def test_leftovers_of_killed_runs_are_cleaned_at_start_and_live_ones_kept(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    dead = 2**22 + 12345  # beyond the default pid_max: no such process
    stale = [run / "checkpoints" / "8.orbax-checkpoint-tmp-1234", run / f".best.partial-{dead}-ab12"]
    live = run / ".best.partial-1-cd34"  # PID 1 is always alive
    for path in [*stale, live]:
        path.mkdir()
        (path / "blob").write_bytes(b"x" * 1000)
    result = cli("jsr.train", TINY, f"--workdir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not any(p.exists() for p in stale) and live.is_dir()
    assert "8.orbax-checkpoint-tmp-1234" in result.stdout


def test_trainer_usage_errors_are_one_line(tmp_path):
    one_line_error(cli("jsr.train", TINY, f"--workdir={tmp_path / 'a'}", "--config.batch_sise=3"), 2, "batch_size")
    one_line_error(cli("jsr.train", TINY, f"--workdir={tmp_path / 'b'}", "--config.batch_size=6"), 2, "batch_size 6")
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    one_line_error(cli("jsr.train", TINY, f"--workdir={blocker / 'run'}"), 1, str(blocker))
    assert blocker.read_text() == "in the way"


def test_divergence_before_the_first_checkpoint_says_nothing_was_saved(tmp_path):
    config = load_config_file(ROOT / "configs" / "quickstart.py", "tiny")
    config.update(num_train_steps=20, checkpoint_every_steps=100, log_every_steps=1)
    config.optim.g.learning_rate = 1e4
    config.optim.g.schedule = "constant"
    config.data.augment.enabled = False
    with pytest.raises(TrainingDiverged, match="no checkpoint had been saved yet") as caught:
        train_and_evaluate(config, tmp_path / "run")
    assert "step None" not in str(caught.value)


# ------------------------------------------------------------------------------------ 10: the umask rules


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_outputs_respect_the_umask(tmp_path, mask, weights):
    previous = os.umask(mask)
    try:
        png = tmp_path / "a.png"
        from jsr.images import write_png

        write_png(png, np.zeros((2, 2, 3), np.uint8))
        _, variables = checkpoints.load_model(weights)
        model = checkpoints.save_model(tmp_path / "m", "generator", {"n_feats": 8, "num_blocks": 1}, variables)
    finally:
        os.umask(previous)
    assert png.stat().st_mode & 0o777 == 0o666 & ~mask
    assert model.stat().st_mode & 0o777 == 0o777 & ~mask
    assert (model / checkpoints.MODEL_FILE).stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_half_written_metrics_line_of_a_killed_run_is_dropped_on_resume(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "g_lo')  # killed mid-write
    result = cli("jsr.train", TINY, f"--workdir={run}", "--config.num_train_steps=8")
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"g_lo' not in (run / "metrics.jsonl").read_text().replace('"g_loss"', "")


# -------------------------------------------------------------------------------- 13: one exit-code rule


@pytest.mark.parametrize("module", ["jsr.train", "jsr.upscale", "jsr.evaluate", "jsr.convert", "jsr.data.prepare"])
def test_usage_errors_exit_2_everywhere(module):
    result = cli(module, "--no-such-flag")
    assert result.returncode == 2, (module, result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr


def test_a_run_failure_exits_1_and_bad_input_2(tmp_path, weights):
    write_photo(tmp_path / "in" / "good.png")
    (tmp_path / "in" / "bad.png").write_bytes(b"not a png")
    failed = cli("jsr.upscale", "--weights", weights, "--input", tmp_path / "in", "--output", tmp_path / "out")
    assert failed.returncode == 1 and (tmp_path / "out" / "good.png").is_file()  # some files failed: a run failure
    missing = cli("jsr.upscale", "--weights", tmp_path / "nowhere", "--input", tmp_path / "in", "--output", tmp_path)
    one_line_error(missing, 2, "nowhere")


def test_two_trainer_processes_on_one_workdir_the_second_is_refused(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "jsr.train", TINY, f"--workdir={run}", "--config.num_train_steps=400",
         "--config.eval_every_steps=400", "--config.checkpoint_every_steps=400", "--config.log_every_steps=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        metrics = run / "metrics.jsonl"
        while time.monotonic() < deadline and first.poll() is None and not (metrics.exists() and metrics.read_text()):
            time.sleep(0.5)  # a logged step: the lock is held and SIGTERM handled
        assert first.poll() is None, first.communicate()[1][-2000:]
        second = cli("jsr.train", TINY, f"--workdir={run}")
        one_line_error(second, 2, f"PID {first.pid}")
    finally:
        first.terminate()  # SIGTERM: it saves and exits 0
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines))  # no line written twice by two runs


@pytest.mark.parametrize("command", ["upscale", "evaluate"])
def test_an_output_the_system_refuses_is_one_line_and_exit_1(tmp_path, weights, command):
    photos = tmp_path / "in"
    write_photo(photos / "a.png", size=(48, 48))
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    if command == "upscale":
        args = ("jsr.upscale", "--weights", weights, "--input", photos, "--output", blocker / "out")
    else:
        args = ("jsr.evaluate", "--model", f"g={weights}", "--dataset", f"folder:{photos}", "--output", blocker / "out")
    one_line_error(cli(*args), 1, "notes.txt")
    assert blocker.read_text() == "keep me"
