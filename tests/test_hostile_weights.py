"""Broken, hostile or mismatched weights: one `error:` line, the documented exit code, and nothing written.

Converter side (needs torch for the source layouts): NaN / inf and integer tensors, a checkpoint of another model,
a folder as --input, an output under a file. Loading side (no torch): damaged Orbax data, missing Orbax metadata,
a jsr_model.json that does not describe its variables, invalid JSON, NaN in saved variables.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import random_generator_variables
from PIL import Image

from jsr.checkpoints import MODEL_FILE, VARIABLES_DIR, ModelFileError, load_model, save_model
from jsr.convert import main as convert_main
from jsr.models import Generator
from jsr.upscale import main as upscale_main

CONFIG = {"n_feats": 8, "num_blocks": 2, "scale": 2, "channels": 3, "bicubic_skip": False}


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def no_partials(folder: Path) -> bool:
    return not [p for p in os.listdir(folder) if ".partial" in p]


# ---------------------------------------------------------------------------------------------- converter


def torch_state(kind: str) -> dict:
    import torch_reference as ref

    if kind == "generator":
        return ref.randomize_(ref.Generator(n_feats=8, num_block=2, scale=4), seed=0).state_dict()
    if kind == "discriminator":
        return ref.randomize_(ref.Discriminator(n_feats=8, patch_size=32), seed=0).state_dict()
    return ref.VGG19().state_dict()


def convert(tmp_path, capfd, source, kind="generator", output=None):
    output = output or tmp_path / "out"
    code = convert_main(["--model", kind, "--input", str(source), "--output", str(output)])
    return code, capfd.readouterr().err


def assert_nothing_written(tmp_path):
    assert not (tmp_path / "out").exists()
    assert no_partials(tmp_path)


@pytest.mark.torch
def test_nan_and_inf_tensors_are_refused(tmp_path, capfd):
    import torch

    state = torch_state("generator")
    state["body.1.body.0.body.0.weight"][0, 0, :, 0] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    state["conv02.body.1.running_var"][2] = float("nan")
    torch.save(state, tmp_path / "diverged.pt")
    code, err = convert(tmp_path, capfd, tmp_path / "diverged.pt")
    line = one_error_line(err)
    assert code == 2
    assert "diverged.pt" in line and "'body.1.body.0.body.0.weight' holds 3 non-finite values" in line
    assert "(and 1 more tensors)" in line
    assert_nothing_written(tmp_path)


@pytest.mark.torch
def test_integer_tensors_are_refused_but_integer_buffers_ignored(tmp_path, capfd):
    import torch
    from safetensors.torch import save_file

    state = {k: v.clone().contiguous() for k, v in torch_state("generator").items()}
    assert state["body.0.body.0.body.1.num_batches_tracked"].dtype == torch.int64  # stays: an integer by nature
    state["conv01.body.0.weight"] = (state["conv01.body.0.weight"] * 100).to(torch.int8)
    save_file(state, str(tmp_path / "quantised.safetensors"))
    code, err = convert(tmp_path, capfd, tmp_path / "quantised.safetensors")
    line = one_error_line(err)
    assert code == 2 and "quantised.safetensors" in line and "'conv01.body.0.weight' holds int8 values" in line
    assert_nothing_written(tmp_path)


@pytest.mark.torch
@pytest.mark.parametrize(
    "actual, given", [("discriminator", "generator"), ("generator", "discriminator"), ("vgg19", "generator")]
)
def test_checkpoint_of_another_model_names_the_right_flag(tmp_path, capfd, actual, given):
    import torch

    torch.save(torch_state(actual), tmp_path / "weights.pt")
    code, err = convert(tmp_path, capfd, tmp_path / "weights.pt", given)
    line = one_error_line(err)
    assert code == 2 and f"this looks like a {actual} checkpoint: use --model {actual}" in line
    assert_nothing_written(tmp_path)


def test_input_folder_and_usage_errors(tmp_path, capfd):
    (tmp_path / "weights").mkdir()
    code, err = convert(tmp_path, capfd, tmp_path / "weights")
    line = one_error_line(err)
    assert code == 2 and "weights is a folder; --input takes one checkpoint file" in line
    assert_nothing_written(tmp_path)
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage on stderr, exit code 2
        convert_main(["--model", "resnet", "--input", "x.pt", "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert_nothing_written(tmp_path)


@pytest.mark.torch
def test_output_under_a_file_is_one_line_exit_1(tmp_path, capfd):
    import torch

    torch.save(torch_state("generator"), tmp_path / "g.pt")
    (tmp_path / "notes.txt").write_text("user data")
    code, err = convert(tmp_path, capfd, tmp_path / "g.pt", output=tmp_path / "notes.txt" / "srgan")
    line = one_error_line(err)
    # the system refused the location: exit 1 like every jsr command's OSError (jsr.errors)
    assert code == 1 and "notes.txt" in line and "move it or choose another location" in line
    assert (tmp_path / "notes.txt").read_text() == "user data"
    assert no_partials(tmp_path)


# ---------------------------------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("weights") / "g"
    save_model(directory, "generator", CONFIG, random_generator_variables(Generator(**CONFIG), seed=3))
    return directory


def truncate_largest(directory: Path) -> None:
    files = [p for p in (directory / VARIABLES_DIR).rglob("*") if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])


def remove_orbax_metadata(directory: Path) -> None:
    metadata = directory / VARIABLES_DIR / "_METADATA"
    assert metadata.is_file(), f"this Orbax writes {os.listdir(directory / VARIABLES_DIR)}: update the test"
    metadata.unlink()


def edit_config(**changes):
    def edit(directory: Path) -> None:
        description = json.loads((directory / MODEL_FILE).read_text())
        description["config"].update(changes)
        (directory / MODEL_FILE).write_text(json.dumps(description))

    return edit


def write_json(content: bytes):
    return lambda directory: (directory / MODEL_FILE).write_bytes(content)


DAMAGE = {
    "truncated-data": (truncate_largest, ["cannot read the saved weights", "re-convert or re-export"]),
    "no-orbax-metadata": (remove_orbax_metadata, ["cannot read the saved weights", "_METADATA"]),
    "more-blocks-in-json": (edit_config(num_blocks=3), ["saved variables have no params/body_2/"]),
    "fewer-blocks-in-json": (edit_config(num_blocks=1), ["hold params/body_1/", "does not match"]),
    "wider-in-json": (edit_config(n_feats=16), ["params/body_0/bn1/bias is saved with shape (8,)", "expects (16,)"]),
    "bad-config-value": (edit_config(num_blocks="two"), ["does not make a generator"]),
    "not-json": (write_json(b'{"kind": "generator", '), ["is not valid JSON"]),
    "not-utf8": (write_json(b"\xff\xfe\x00garbage"), ["is not valid JSON"]),
    "json-string": (write_json(b'"generator"'), ["holds a JSON str, not an object"]),
    "kind-not-a-string": (write_json(b'{"kind": ["generator"], "config": {}}'), ["'kind' is ['generator']"]),
}


def nan_variables(directory: Path) -> None:
    variables = random_generator_variables(Generator(**CONFIG), seed=3)
    variables["params"]["tail_0"]["conv"]["kernel"][0, 0, 0, :2] = np.nan
    save_model(directory, "generator", CONFIG, variables, overwrite=True)


DAMAGE["nan-in-variables"] = (nan_variables, ["params/tail_0/conv/kernel holds 2 non-finite values"])


def damaged_copy(saved_model: Path, tmp_path: Path, case: str) -> Path:
    directory = tmp_path / "model"
    shutil.copytree(saved_model, directory)
    DAMAGE[case][0](directory)
    return directory


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_model_directory(saved_model, tmp_path, capfd, case):
    directory = damaged_copy(saved_model, tmp_path, case)
    with pytest.raises(ModelFileError) as error:
        load_model(directory)
    message = str(error.value)
    assert str(directory) in message and "\n" not in message
    for part in DAMAGE[case][1]:
        assert part in message
    capfd.readouterr()

    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / "in.png")
    code = upscale_main(
        ["--weights", str(directory), "--input", str(tmp_path / "in.png"), "--output", str(tmp_path / "out.png")]
    )
    assert code == 2
    line = one_error_line(capfd.readouterr().err)  # which damaged array fails first varies: compare the parts
    assert str(directory) in line and all(part in line for part in DAMAGE[case][1])
    assert sorted(os.listdir(tmp_path)) == ["in.png", "model"]


@pytest.mark.parametrize("case", ["no-orbax-metadata", "truncated-data"])
def test_damaged_model_cli_stderr_is_one_line(saved_model, tmp_path, case):
    """The real command: Orbax's warnings (logging) and the failed reads' late reports must not reach the terminal."""
    directory = damaged_copy(saved_model, tmp_path, case)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in.png")
    result = subprocess.run(
        [sys.executable, "-m", "jsr.upscale", "--weights", directory, "--input", tmp_path / "in.png", "--output",
         tmp_path / "out.png"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot read the saved weights" in one_error_line(result.stderr)
    assert not (tmp_path / "out.png").exists()


def test_late_reports_of_abandoned_orbax_reads_are_dropped_and_others_kept(monkeypatch):
    # A failed restore's pending reads may be collected after stderr is back; their reports must not reach it.
    from jsr import checkpoints

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    checkpoints._drop_abandoned_orbax_reads()
    checkpoints._drop_abandoned_orbax_reads()  # idempotent: one wrapper, not a chain

    def coroutine_from(filename):
        namespace = {}
        exec(compile("async def read():\n    pass\n", filename, "exec"), namespace)
        return namespace["read"]()

    class Report:
        def __init__(self, obj):
            self.object, self.exc_type, self.exc_value, self.exc_traceback, self.err_msg = (
                obj,
                Exception,
                None,
                None,
                None,
            )

    orbax_read = coroutine_from(os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "serialization.py"))
    other = coroutine_from(os.path.join(os.sep, "site-packages", "mine", "reader.py"))
    sys.unraisablehook(Report(orbax_read))
    sys.unraisablehook(Report(other))
    orbax_read.close(), other.close()
    assert [report.object for report in seen] == [other]


def test_asyncio_records_of_abandoned_orbax_reads_are_dropped_and_others_kept():
    # The same reads may instead end as asyncio's "Task exception was never retrieved" log record (seen in CI).
    import logging

    from jsr import checkpoints

    checkpoints._drop_abandoned_orbax_reads()
    checkpoints._drop_abandoned_orbax_reads()  # idempotent: one filter
    logger = logging.getLogger("asyncio")
    assert sum(isinstance(f, checkpoints._AbandonedOrbaxTasks) for f in logger.filters) == 1

    def error_from(filename):
        namespace = {}
        exec(compile("def read():\n    raise ValueError('OUT_OF_RANGE')\n", filename, "exec"), namespace)
        try:
            namespace["read"]()
        except ValueError as e:
            try:
                raise RuntimeError("Encountered error while reading array index") from e
            except RuntimeError as outer:
                return outer

    def record(message, error):
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, (type(error), error, None))

    orbax = error_from(os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "serialization.py"))
    mine = error_from(os.path.join(os.sep, "site-packages", "mine", "reader.py"))
    assert not logger.filter(record("Task exception was never retrieved", orbax))
    assert not logger.filter(record("Future exception was never retrieved", orbax))  # a Future's, not a Task's
    assert logger.filter(record("Task exception was never retrieved", mine))
    assert logger.filter(record("some other asyncio error", orbax))
