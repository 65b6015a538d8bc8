"""Folder sources: every bad file reported by name before training; skipped when asked; modes converted."""

import logging

import numpy as np
import pytest
from PIL import Image

import jsr.data as data
from jsr.data import sources
from jsr.parallel import make_mesh

PATCH = 8  # LR crop: HR images need >= 32 pixels on a side


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def messy_folder(tmp_path):
    """Two good RGB images, three usable odd modes, three bad files; returns (folder, expected outcomes)."""
    folder = tmp_path / "hr"
    folder.mkdir()
    Image.fromarray(rgb(48, 40, 1)).save(folder / "good1.png")
    Image.fromarray(rgb(64, 64, 2)).save(folder / "good2.jpg", quality=95)
    deep = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40).astype(np.uint16)
    Image.fromarray(deep).save(folder / "deep16.png")  # mode I;16
    Image.fromarray(rgb(40, 40, 3)[..., 0], "L").save(folder / "gray.png")
    Image.fromarray(rgb(40, 40, 4)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(folder / "palette.png")
    full = (folder / "good1.png").read_bytes()
    (folder / "corrupt.png").write_bytes(full[: len(full) // 2])  # truncated mid-stream
    (folder / "notes.png").write_text("this is not an image\n")
    Image.fromarray(rgb(20, 60, 5)).save(folder / "small.png")  # 20 < 4 * PATCH
    usable = {"good1", "good2", "deep16", "gray", "palette"}
    bad = {"corrupt.png": "not a readable image", "notes.png": "not a readable image", "small.png": "too small"}
    return folder, usable, bad


def folder_config(folder, **kw):
    cfg = data.default_data_config()
    cfg.source = "folder"
    cfg.folder = str(folder)
    cfg.patch_size = PATCH
    cfg.val_fraction = 0.0
    cfg.update(kw)
    return cfg


def test_bad_files_stop_before_training_with_every_name(messy_folder):
    folder, _, bad = messy_folder
    with pytest.raises(sources.BadFilesError) as info:
        data.make_source(folder_config(folder), "train")
    reported = {p.rsplit("/", 1)[-1]: reason for p, reason in info.value.bad}
    assert set(reported) == set(bad)
    for name, why in bad.items():
        assert why in reported[name]
        assert name in str(info.value)
    assert "skip_bad_files" in str(info.value)


def test_skip_bad_files_trains_on_the_rest(messy_folder, caplog):
    folder, usable, bad = messy_folder
    with caplog.at_level(logging.WARNING):
        source = data.make_source(folder_config(folder, skip_bad_files=True), "train")
    assert {source[i]["id"] for i in range(len(source))} == usable
    for name in bad:
        assert name in caplog.text
    it = data.make_train_iterator(folder_config(folder, skip_bad_files=True), 4, 0, make_mesh(), source=source)
    for _ in range(3):  # more than one epoch: no file fails later
        batch = next(it)
        assert batch["hr"].shape == (4, 32, 32, 3)
    it.close()


def test_odd_modes_become_8_bit_rgb(messy_folder):
    folder, _, _ = messy_folder
    source = data.make_source(folder_config(folder, skip_bad_files=True), "train")
    by_id = {source[i]["id"]: source[i] for i in range(len(source))}
    deep = np.asarray(Image.open(folder / "deep16.png"), np.float64)
    np.testing.assert_array_equal(by_id["deep16"]["hr"][..., 1], np.rint(deep / 65535 * 255).astype(np.uint8))
    gray = np.asarray(Image.open(folder / "gray.png"))
    assert all(np.array_equal(by_id["gray"]["hr"][..., c], gray) for c in range(3))
    palette = np.asarray(Image.open(folder / "palette.png").convert("RGB"))
    np.testing.assert_array_equal(by_id["palette"]["hr"], palette)
    for record in by_id.values():
        assert record["hr"].dtype == np.uint8 and record["hr"].shape[2] == 3


def test_hr_only_lr_is_the_pillow_bicubic_downscale_after_cropping_to_the_scale(tmp_path):
    image = rgb(50, 43, 7)  # not multiples of 4: cropped bottom/right to 48x40
    Image.fromarray(image).save(tmp_path / "a.png")
    source = data.make_source(folder_config(tmp_path), "train")
    record = source[0]
    np.testing.assert_array_equal(record["hr"], image[:48, :40])
    expected = np.asarray(Image.fromarray(image[:48, :40]).resize((10, 12), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(record["lr"], expected)


def test_paired_folders_match_by_stem_and_report_mismatches(tmp_path):
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    hr_dir.mkdir()
    lr_dir.mkdir()
    for name, size in [("a", 48), ("b", 40)]:
        Image.fromarray(rgb(size, size, 1)).save(hr_dir / f"{name}.png")
        Image.fromarray(rgb(size // 4, size // 4, 2)).save(lr_dir / f"{name}.png")
    Image.fromarray(rgb(40, 40)).save(hr_dir / "wrong.png")
    Image.fromarray(rgb(11, 10)).save(lr_dir / "wrong.png")  # 40x40 is not 4 x 11x10
    Image.fromarray(rgb(40, 40)).save(hr_dir / "lonely.png")
    cfg = folder_config(hr_dir, lr_folder=str(lr_dir))
    with pytest.raises(sources.BadFilesError) as info:
        data.make_source(cfg, "train")
    reasons = {p.rsplit("/", 1)[-1]: r for p, r in info.value.bad}
    assert set(reasons) == {"wrong.png", "lonely.png"}
    assert "not 4 x LR" in reasons["wrong.png"] and "no LR image" in reasons["lonely.png"]
    cfg.skip_bad_files = True
    source = data.make_source(cfg, "train")
    record = {source[i]["id"]: source[i] for i in range(len(source))}["a"]
    np.testing.assert_array_equal(record["lr"], np.asarray(Image.open(lr_dir / "a.png")))


def test_single_folder_holds_out_validation_deterministically(tmp_path):
    for i in range(10):
        Image.fromarray(rgb(32, 32, i)).save(tmp_path / f"img{i:02d}.png")
    cfg = folder_config(tmp_path, val_fraction=0.2)
    train, val = data.make_source(cfg, "train"), data.make_source(cfg, "validation")
    train_ids = [train[i]["id"] for i in range(len(train))]
    val_ids = [val[i]["id"] for i in range(len(val))]
    assert len(val_ids) == 2 and len(train_ids) == 8 and not set(train_ids) & set(val_ids)
    assert val_ids == [data.make_source(cfg, "validation")[i]["id"] for i in range(2)]


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.make_source(folder_config(tmp_path / "nowhere"), "train")
