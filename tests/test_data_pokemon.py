"""Pokemon TFDS builder from a manual_dir of synthetic 475x475 RGBA PNGs (no network, no TensorFlow); DIV2K errors."""

import sys

import numpy as np
import pytest
from PIL import Image

import jsr.data as data
from jsr.data import prepare

IDS = range(1, 11)
OPAQUE = slice(150, 330)  # the opaque square; everything else has alpha 0 over random colours


def expected_split(ident):
    return {0: "train", 1: "train", 2: "train", 3: "validation", 4: "test"}[ident % 5]


def pil_hr(path):
    """The seed's preparation written with Pillow alone: composite on white, bicubic to 256."""
    rgba = Image.open(path).convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB").resize((256, 256), Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("artwork")
    rng = np.random.default_rng(0)
    for i in IDS:
        rgba = rng.integers(0, 256, (475, 475, 4), dtype=np.uint8)
        rgba[..., 3] = 0
        rgba[OPAQUE, OPAQUE, 3] = 255
        Image.fromarray(rgba, "RGBA").save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def data_dir(manual_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tfds")
    prepare.main(["--dataset=pokemon", f"--manual-dir={manual_dir}", f"--data-dir={out}"])
    return out


def pokemon_config(data_dir, downscale="bicubic"):
    cfg = data.default_data_config()
    cfg.update(source="pokemon", data_dir=str(data_dir), downscale=downscale, patch_size=16)
    return cfg


def read_split(data_dir, split, downscale="bicubic"):
    source = data.make_source(pokemon_config(data_dir, downscale), split)
    return {r["id"]: r for r in (source[i] for i in range(len(source)))}


def test_splits_are_60_20_20_by_id(data_dir):
    for split in ("train", "validation", "test"):
        assert set(read_split(data_dir, split)) == {str(i) for i in IDS if expected_split(i) == split}


def test_shapes_white_background_and_seed_preparation(data_dir, manual_dir):
    for ident, record in read_split(data_dir, "train").items():
        hr, lr = record["hr"], record["lr"]
        assert hr.shape == (256, 256, 3) and lr.shape == (64, 64, 3)
        assert hr.dtype == np.uint8 and lr.dtype == np.uint8
        np.testing.assert_array_equal(hr[:70, :70], 255)  # alpha was 0 there (475 -> 256: pixels < ~80)
        np.testing.assert_array_equal(hr[-70:, -70:], 255)
        assert np.abs(hr.astype(int) - pil_hr(manual_dir / f"{ident}.png")).max() <= 1  # float vs integer blend


@pytest.mark.parametrize("downscale", ["bicubic", "lanczos"])
def test_lr_is_the_pillow_downscale_of_hr(data_dir, manual_dir, downscale):
    if downscale == "lanczos":
        prepare.prepare_pokemon(str(data_dir), str(manual_dir), "lanczos")
    resample = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}[downscale]
    records = read_split(data_dir, "validation", downscale)
    assert records
    for record in records.values():
        expected = np.asarray(Image.fromarray(record["hr"]).resize((64, 64), resample))
        np.testing.assert_array_equal(record["lr"], expected)


def test_training_batches_from_the_prepared_data(data_dir):
    from jsr.parallel import make_mesh

    it = data.make_train_iterator(pokemon_config(data_dir), batch_size=4, seed=0, mesh=make_mesh())
    batch = next(it)
    assert batch["hr"].shape == (4, 64, 64, 3) and batch["lr"].shape == (4, 16, 16, 3)
    it.close()


def test_unprepared_pokemon_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match="jsr.data.prepare --dataset=pokemon"):
        data.make_source(pokemon_config(tmp_path), "train")


def test_empty_manual_dir_is_refused(tmp_path, capsys):
    assert prepare.main(["--dataset=pokemon", f"--manual-dir={tmp_path}", f"--data-dir={tmp_path / 'out'}"]) == 2
    assert "no *.png" in capsys.readouterr().err


def test_div2k_without_tensorflow_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if TensorFlow were not installed
    assert prepare.main(["--dataset=div2k", f"--data-dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'jsr[div2k]'" in err and len(err.strip().splitlines()) == 1


def test_unprepared_div2k_says_how_to_prepare(tmp_path):
    cfg = data.default_data_config()
    cfg.update(source="div2k", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"jsr\[div2k\].*--dataset=div2k"):
        data.make_source(cfg, "train")
