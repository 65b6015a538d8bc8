"""Every bad converter input fails with a message naming the key / file, exit code 2, and no output at all."""

import os

import pytest

from jsr.convert import main as convert_main

pytestmark = pytest.mark.torch


@pytest.fixture
def generator_state():
    import torch_reference as ref

    return ref.Generator(n_feats=8, num_block=2, scale=4).state_dict()


def convert(tmp_path, capsys, path, kind="generator", *extra):
    code = convert_main(["--model", kind, "--input", str(path), "--output", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    return code, err


def assert_nothing_written(tmp_path):
    assert not (tmp_path / "out").exists()
    assert not [p for p in os.listdir(tmp_path) if ".partial" in p]


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickle_that_runs_code_is_refused(tmp_path, capsys, monkeypatch, generator_state, legacy):
    import torch

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({**generator_state, "payload": Evil()}, path, _use_new_zipfile_serialization=not legacy)
    code, err = convert(tmp_path, capsys, path)
    assert code == 2
    assert "refused" in err and "system" in err and "evil.pt" in err
    assert not (tmp_path / "pwned-by-checkpoint").exists()
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [(b"hello, I am a text file\n", "not a PyTorch checkpoint"), (b"", "not a PyTorch checkpoint")],
    ids=["text", "empty"],
)
def test_not_a_checkpoint(tmp_path, capsys, content, message):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    code, err = convert(tmp_path, capsys, path)
    assert code == 2 and message in err and "weights.pth" in err
    assert_nothing_written(tmp_path)


def test_bad_safetensors_and_missing_file(tmp_path, capsys):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    code, err = convert(tmp_path, capsys, path)
    assert code == 2 and "broken.safetensors" in err and "not a valid .safetensors" in err
    code, err = convert(tmp_path, capsys, tmp_path / "nope.pt")
    assert code == 2 and "no such file" in err
    assert_nothing_written(tmp_path)


def test_generator_file_passed_as_vgg19(tmp_path, capsys, generator_state):
    import torch

    torch.save(generator_state, tmp_path / "SRGAN.pt")
    code, err = convert(tmp_path, capsys, tmp_path / "SRGAN.pt", "vgg19")
    assert code == 2
    assert "'features.0.weight'" in err and "use --model generator" in err
    assert_nothing_written(tmp_path)


def test_missing_unexpected_and_misshaped_keys(tmp_path, capsys, generator_state):
    import torch

    missing = dict(generator_state)
    del missing["body.1.body.0.body.1.running_mean"]
    missing["extra.weight"] = torch.zeros(3)
    torch.save(missing, tmp_path / "keys.pt")
    code, err = convert(tmp_path, capsys, tmp_path / "keys.pt")
    assert code == 2
    assert "missing key: body.1.body.0.body.1.running_mean (expected shape (8,))" in err
    assert "unexpected key: extra.weight (shape (3,))" in err
    assert_nothing_written(tmp_path)

    misshaped = dict(generator_state)
    misshaped["body.0.body.1.body.0.bias"] = torch.zeros(9)
    torch.save(misshaped, tmp_path / "shape.pt")
    code, err = convert(tmp_path, capsys, tmp_path / "shape.pt")
    assert code == 2
    assert "body.0.body.1.body.0.bias: checkpoint has (9,), expected (8,)" in err
    assert_nothing_written(tmp_path)


def test_not_a_state_dict(tmp_path, capsys):
    import torch

    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    code, err = convert(tmp_path, capsys, tmp_path / "list.pt")
    assert code == 2 and "expected a state_dict" in err
    torch.save({"conv01.body.0.weight": torch.zeros(8, 3, 9, 9), "epoch": 3}, tmp_path / "mixed.pt")
    code, err = convert(tmp_path, capsys, tmp_path / "mixed.pt")
    assert code == 2 and "'epoch' is a int, not a tensor" in err
    assert_nothing_written(tmp_path)


def test_existing_output_needs_overwrite(tmp_path, capsys, generator_state):
    import torch

    torch.save(generator_state, tmp_path / "g.pt")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("user data")
    code, err = convert(tmp_path, capsys, tmp_path / "g.pt")
    assert code == 2 and "not empty" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "user data"
    code, err = convert(tmp_path, capsys, tmp_path / "g.pt", "generator", "--overwrite")  # only models are replaced
    assert code == 2 and "not a jsr model directory" in err and "keep.txt" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "user data"
    (tmp_path / "out" / "keep.txt").unlink()
    assert convert(tmp_path, capsys, tmp_path / "g.pt")[0] == 0
    code, _ = convert(tmp_path, capsys, tmp_path / "g.pt", "generator", "--overwrite")
    assert code == 0 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["jsr_model.json", "variables"]
