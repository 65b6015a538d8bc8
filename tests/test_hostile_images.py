"""Hostile and awkward image files through the real entry points: EXIF orientation, animations, decompression
bombs, PNGs whose data ends early, and the PSNR of identical images.

Every crafted file is written here, byte by byte where Pillow would refuse to make it.
"""

import csv
import io
import json
import logging
import struct
import time
import zlib

import numpy as np
import pytest
from helpers import make_generator_dir
from PIL import Image, ImageFile, ImageOps

import jsr.data as data
from jsr import images
from jsr.data import sources
from jsr.evaluate import main as evaluate_main
from jsr.upscale import input_size
from jsr.upscale import main as upscale_main

ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    directory = tmp_path_factory.mktemp("weights") / "small"
    make_generator_dir(directory, seed=1, n_feats=8, num_blocks=1, scale=4)
    return directory


def pattern(h, w, seed=0):
    """Asymmetric content: any flip or rotation of it differs from it."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image[:4, :8] = (255, 0, 0)  # a red corner at the top left
    return image


def save_with_orientation(path, image, orientation, **options):
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(image).save(path, exif=exif, **options)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(path, width, height):
    """A real 1x1 PNG whose IHDR is patched to claim ``width`` x ``height`` (CRC fixed): ~70 bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    raw = bytearray(buffer.getvalue())
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))
    return path


def short_png(path, width, height, rows=1):
    """A valid RGB header of ``width`` x ``height`` whose one, complete zlib stream holds only ``rows`` rows."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress((b"\x00" + b"\x80" * (3 * width)) * rows, 9)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")
    )
    return path


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def interlaced_png(path, image, passes=7):
    """An Adam7-interlaced 8-bit RGB PNG (Pillow cannot write one); ``passes`` < 7 leaves the last ones out."""
    h, w = image.shape[:2]
    rows = [b"\x00" + row.tobytes() for x0, y0, dx, dy in ADAM7[:passes] for row in image[y0::dy, x0::dx] if row.size]
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    body = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"".join(rows))) + png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def animated_gif(path, frames=3, size=(24, 32)):
    """``frames`` visibly different frames; returns the first as RGB uint8."""
    h, w = size
    pictures = [
        Image.fromarray(pattern(h, w, seed)).convert("P", palette=Image.Palette.ADAPTIVE) for seed in range(frames)
    ]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=100, loop=0)
    with Image.open(path) as im:
        assert im.n_frames == frames
        return np.asarray(im.convert("RGB"))


def no_traceback(err: str) -> str:
    assert "Traceback" not in err, err
    return err


def upscale(capsys, *args):
    code = upscale_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, no_traceback(err)


def evaluate(capsys, *args):
    code = evaluate_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, no_traceback(err)


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("evaluate:")]  # tqdm's bar
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------ EXIF orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_read_image_and_header_size_apply_every_exif_orientation(tmp_path, orientation):
    image = pattern(10, 16)
    path = tmp_path / "photo.png"
    save_with_orientation(path, image, orientation)
    with Image.open(path) as im:
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    got = images.to_uint8(images.read_image(path).rgb)
    np.testing.assert_array_equal(got, want)
    assert images.image_size(path) == input_size(path) == want.shape[:2]
    assert want.shape[:2] == ((16, 10) if orientation >= 5 else (10, 16))  # 5-8 swap the sides


def test_phone_jpeg_with_orientation_6_is_upscaled_upright(tmp_path, capsys, generator):
    rows, cols = np.mgrid[0:40, 0:64]
    image = np.stack([rows * 6, cols * 4, np.full_like(rows, 128)], axis=-1).astype(np.uint8)  # smooth: JPEG-friendly
    image[:8, :8] = (255, 0, 0)  # a red corner at the top left
    save_with_orientation(tmp_path / "phone.jpg", image, 6, quality=95)
    upright = np.rot90(image, k=-1)  # orientation 6: the camera was turned; display rotated 90 degrees clockwise
    got = images.to_uint8(images.read_image(tmp_path / "phone.jpg").rgb)
    assert got.shape == (64, 40, 3)
    assert np.abs(got.astype(int) - upright).mean() < 8  # JPEG noise only; the unrotated read cannot even compare
    assert tuple(got[0, -1]) == pytest.approx((255, 0, 0), abs=40)  # the red corner is now at the top right
    code, out, err = upscale(
        capsys, "--weights", generator, "--input", tmp_path / "phone.jpg", "--output", tmp_path / "o"
    )
    assert code == 0, err
    with Image.open(tmp_path / "o" / "phone.png") as im:
        assert (im.height, im.width) == (256, 160)


# ------------------------------------------------------------------------------------------ animations


def test_animated_gif_gives_its_first_frame_with_a_notice_as_a_file_and_in_a_folder(tmp_path, capsys, generator):
    assert ".gif" in images.IMAGE_SUFFIXES
    (tmp_path / "single").mkdir()
    first = animated_gif(tmp_path / "single" / "clip.gif")
    code, _, err = upscale(
        capsys, "--weights", generator, "--input", tmp_path / "single" / "clip.gif", "--output", tmp_path / "o1"
    )
    assert code == 0, err
    notices = [line for line in err.splitlines() if "clip.gif" in line]
    assert len(notices) == 1 and "3 frames" in notices[0] and "first" in notices[0], err
    assert (tmp_path / "o1" / "clip.png").is_file()

    folder = tmp_path / "folder"
    folder.mkdir()
    animated_gif(folder / "anim.gif")
    Image.fromarray(first).save(folder / "still.png")  # the first frame as a plain file
    code, out, err = upscale(capsys, "--weights", generator, "--input", folder, "--output", tmp_path / "o2")
    assert code == 0, err
    assert "wrote 2 image(s)" in out
    notices = [line for line in err.splitlines() if "anim.gif" in line]
    assert len(notices) == 1 and "3 frames" in notices[0] and "first" in notices[0], err
    a = np.asarray(Image.open(tmp_path / "o2" / "anim.png"))
    b = np.asarray(Image.open(tmp_path / "o2" / "still.png"))
    assert a.shape == (96, 128, 3)
    np.testing.assert_array_equal(a, b)  # the GIF's output is its first frame's
    np.testing.assert_array_equal(images.to_uint8(images.read_image(folder / "anim.gif").rgb), first)


def test_training_folder_scan_takes_gifs(tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    first = animated_gif(folder / "anim.gif", size=(40, 48))
    source = data.make_source(folder_config(folder), "train")
    assert [source[i]["id"] for i in range(len(source))] == ["anim"]
    np.testing.assert_array_equal(source[0]["hr"], first)


# ------------------------------------------------------------------------------------------ bombs, truncation


@pytest.fixture
def hostile_folder(tmp_path):
    """One good image, a 20000x20000 header bomb, a 10000x10000 PNG holding one row, a 3000x2000 one likewise."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(pattern(40, 48)).save(folder / "good.png")
    bomb_png(folder / "bomb.png", 20000, 20000)
    short_png(folder / "huge_short.png", 10000, 10000)
    short_png(folder / "short.png", 3000, 2000)
    assert (folder / "bomb.png").stat().st_size < 200 and (folder / "huge_short.png").stat().st_size < 200
    return folder


def test_read_image_refuses_bombs_before_decoding_and_short_data(hostile_folder):
    for name in ("bomb.png", "huge_short.png"):
        with pytest.raises(images.ImageReadError, match="megapixels.*--max-pixels") as info:
            images.read_image(hostile_folder / name)
        assert name in str(info.value) and "\n" not in str(info.value)
        with pytest.raises(images.ImageReadError, match="--max-pixels"):
            images.image_size(hostile_folder / name)
    with pytest.raises(images.ImageReadError, match="truncated") as info:
        images.read_image(hostile_folder / "short.png")
    assert "short.png" in str(info.value)
    # raising the limit lets the huge one be opened, and then its missing rows are found, quickly
    start = time.perf_counter()
    with pytest.raises(images.ImageReadError, match="truncated"):
        images.read_image(hostile_folder / "huge_short.png", max_pixels=200_000_000)
    assert time.perf_counter() - start < 5
    with pytest.raises(images.ImageReadError, match="megapixels"):
        images.read_image(hostile_folder / "good.png", max_pixels=1000)  # 40x48 = 1920 pixels


def test_truncation_is_found_even_when_pillow_is_told_to_load_truncated_images(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    Image.fromarray(pattern(64, 80)).save(tmp_path / "full.png")
    raw = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 2])
    for name in ("cut.png", "short.png"):
        if name == "short.png":
            short_png(tmp_path / name, 300, 200)
        with pytest.raises(images.ImageReadError, match=name):
            images.read_image(tmp_path / name)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "interlaced"])
def test_complete_pngs_of_every_layout_pass_the_truncation_check(tmp_path, mode):
    image = pattern(13, 29)  # odd sides: partial bytes per row for 1-bit, partial Adam7 passes
    path = tmp_path / "ok.png"
    if mode == "interlaced":
        interlaced_png(path, image)
        np.testing.assert_array_equal(images.to_uint8(images.read_image(path).rgb), image)
        with pytest.raises(images.ImageReadError, match="truncated"):
            images.read_image(interlaced_png(tmp_path / "short.png", image, passes=6))
        return
    if mode == "I;16":
        Image.fromarray(image[..., 0].astype(np.uint16) * 257).save(path)
    else:
        Image.fromarray(image).convert(mode).save(path)
    images.read_image(path)


def test_folder_upscale_skips_bombs_and_short_files_and_writes_the_rest(hostile_folder, tmp_path, capsys, generator):
    start = time.perf_counter()
    code, out, err = upscale(capsys, "--weights", generator, "--input", hostile_folder, "--output", tmp_path / "out")
    assert time.perf_counter() - start < 60
    assert code == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.png"]
    assert "wrote 1 image(s)" in out and "3 failed" in out
    for name in ("bomb.png", "huge_short.png", "short.png"):
        assert f"failed: {hostile_folder / name}" in err, err
    bomb = next(line for line in err.splitlines() if line.startswith("failed:") and "bomb.png" in line)
    assert "--max-pixels" in bomb
    short = next(line for line in err.splitlines() if line.startswith("failed:") and "/short.png" in line)
    assert "truncated" in short


def test_upscale_max_pixels_flag_sets_the_limit(tmp_path, capsys, generator):
    Image.fromarray(pattern(40, 48)).save(tmp_path / "good.png")
    code, _, err = upscale(
        capsys,
        "--weights",
        generator,
        "--input",
        tmp_path / "good.png",
        "--output",
        tmp_path / "o",
        "--max-pixels",
        1000,
    )
    assert code == 2 and "good.png" in err and "--max-pixels" in err  # the one input refused: bad input
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
    with pytest.raises(SystemExit) as info:
        upscale_main(["--weights", str(generator), "--input", str(tmp_path), "--output", "o", "--max-pixels", "0"])
    assert info.value.code == 2


@pytest.mark.parametrize("name", ["bomb.png", "short.png"])
def test_evaluate_refuses_a_bad_data_set_file_in_one_line(hostile_folder, tmp_path, capsys, name):
    folder = tmp_path / "hr"
    folder.mkdir()
    Image.fromarray(pattern(40, 48)).save(folder / "good.png")
    (folder / name).write_bytes((hostile_folder / name).read_bytes())
    code, _, err = evaluate(capsys, "--dataset", f"folder:{folder}", "--output", tmp_path / "res", "--figures", 0)
    assert code == 2
    line = one_error_line(err)
    assert name in line
    assert not (tmp_path / "res" / "results.json").exists()


def test_evaluate_refuses_a_bomb_among_precomputed_outputs_and_takes_max_pixels(tmp_path, capsys):
    hr, sr = tmp_path / "hr", tmp_path / "sr"
    hr.mkdir()
    sr.mkdir()
    Image.fromarray(pattern(40, 48)).save(hr / "a.png")
    bomb_png(sr / "a.png", 20000, 20000)
    args = ["--dataset", f"folder:{hr}", "--sr", f"other={sr}", "--output", tmp_path / "res", "--figures", 0]
    code, _, err = evaluate(capsys, *args)
    assert code == 2 and "sr/a.png" in one_error_line(err) and "--max-pixels" in err
    code, _, err = evaluate(capsys, *args[:2], "--output", tmp_path / "res", "--max-pixels", 1000)
    assert code == 2 and "hr/a.png" in one_error_line(err) and "megapixels" in err


def folder_config(folder, **overrides):
    cfg = data.default_data_config()
    cfg.source = "folder"
    cfg.folder = str(folder)
    cfg.patch_size = 8
    cfg.val_fraction = 0.0
    cfg.update(overrides)
    return cfg


def test_training_folder_scan_lists_bombs_and_short_files_and_skips_them_when_asked(hostile_folder, caplog):
    with pytest.raises(sources.BadFilesError) as info:
        data.make_source(folder_config(hostile_folder), "train")
    reported = {path.rsplit("/", 1)[-1]: reason for path, reason in info.value.bad}
    assert set(reported) == {"bomb.png", "huge_short.png", "short.png"}
    assert "max_image_pixels" in reported["bomb.png"] and "megapixels" in reported["huge_short.png"]
    assert "truncated" in reported["short.png"]
    with caplog.at_level(logging.WARNING):
        source = data.make_source(folder_config(hostile_folder, skip_bad_files=True), "train")
    assert [source[i]["id"] for i in range(len(source))] == ["good"]
    assert source[0]["hr"].shape == (40, 48, 3)
    assert all(name in caplog.text for name in reported)


def test_training_pixel_limit_is_a_config_field(tmp_path):
    assert data.default_data_config().max_image_pixels == images.MAX_PIXELS
    folder = tmp_path / "hr"
    folder.mkdir()
    Image.fromarray(pattern(40, 48)).save(folder / "good.png")
    Image.fromarray(pattern(64, 64)).save(folder / "big.png")
    source = data.make_source(folder_config(folder, max_image_pixels=2000, skip_bad_files=True), "train")
    assert [source[i]["id"] for i in range(len(source))] == ["good"]  # 1920 pixels pass, 4096 do not


# ------------------------------------------------------------------------------------------ PSNR of identical images


def test_identical_images_score_infinite_psnr_in_every_output(tmp_path, capsys):
    hr = tmp_path / "hr"
    hr.mkdir()
    for seed in range(3):
        Image.fromarray(pattern(48, 64, seed)).save(hr / f"im{seed}.png")
    code, out, err = evaluate(
        capsys, "--dataset", f"folder:{hr}", "--sr", f"same={hr}", "--output", tmp_path / "res", "--figures", 1
    )
    assert code == 0, err

    def no_bare_constants(name):
        raise AssertionError(f"results.json holds a bare {name}, which JSON readers reject")

    text = (tmp_path / "res" / "results.json").read_text()
    same = json.loads(text, parse_constant=no_bare_constants)["models"]["same"]
    for values in [same["mean"], *same["per_image"].values()]:
        assert values["psnr_y"] == values["psnr_rgb"] == "Infinity"
        assert float(values["psnr_y"]) == float("inf")
        assert values["mse"] == 0.0 and values["ssim_y"] == pytest.approx(1.0, abs=1e-6)
    rows = [
        r for r in csv.DictReader(io.StringIO((tmp_path / "res" / "results.csv").read_text())) if r["model"] == "same"
    ]
    assert len(rows) == 4 and all(float(r["psnr_y"]) == float("inf") for r in rows)
    table = (tmp_path / "res" / "results.md").read_text()
    assert "| same | 0.000000 | inf | inf |" in table
