"""`python -m jsr.upscale` and the tiling engine, on real photos and awkward files."""

import subprocess
import sys

import numpy as np
import pytest
from helpers import make_generator_dir, random_generator_variables
from PIL import Image
from skimage import data

from jsr.images import composite, read_image, to_uint8
from jsr.inference import Upscaler
from jsr.models import Generator


def run_upscale(*args):
    return subprocess.run(
        [sys.executable, "-m", "jsr.upscale", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def photo(h, w):
    """A crop of scikit-image's bundled astronaut photo, as float RGB in [0, 1]."""
    return data.astronaut()[100 : 100 + h, 150 : 150 + w].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def full_generator(tmp_path_factory):
    """The released architecture (16 blocks x 64 features, x4) with random non-trivial weights."""
    directory = tmp_path_factory.mktemp("weights") / "g"
    make_generator_dir(directory, seed=0)
    return directory


@pytest.fixture(scope="module")
def small_generator(tmp_path_factory):
    directory = tmp_path_factory.mktemp("weights") / "small"
    make_generator_dir(directory, seed=1, n_feats=16, num_blocks=2, scale=4)
    return directory


@pytest.mark.slow  # the exactness itself is tested on both jax versions below, without the CLI
def test_tiled_equals_untiled_cli(tmp_path, full_generator):
    image = photo(200, 300)  # 300 wide, 200 high
    Image.fromarray((image * 255).round().astype(np.uint8)).save(tmp_path / "photo.png")
    whole = run_upscale("--weights", full_generator, "--input", tmp_path / "photo.png", "--output", tmp_path / "w.png")
    assert whole.returncode == 0, whole.stderr
    tiled = run_upscale(
        "--weights", full_generator, "--input", tmp_path / "photo.png", "--output", tmp_path / "t.png", "--tile", 64,
        "--conv", "winograd",
    )  # fmt: skip
    assert tiled.returncode == 0, tiled.stderr
    # 0.06 megapixels: too little work for Winograd's longer compile, unless asked for
    assert "(conv=xla)" in whole.stdout and "(conv=winograd)" in tiled.stdout
    a = np.asarray(Image.open(tmp_path / "w.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "t.png")).astype(int)
    assert a.shape == b.shape == (800, 1200, 3)
    assert a.std() > 20  # a real, varied output, not a flat image
    assert np.abs(a - b).max() <= 1


@pytest.mark.parametrize("scale, bicubic_skip", [(4, False), (3, True)])
def test_padding_and_tiling_are_exact_with_one_compile_per_shape(scale, bicubic_skip):
    module = Generator(n_feats=16, num_blocks=3, scale=scale, bicubic_skip=bicubic_skip)
    variables = random_generator_variables(module, seed=2)
    images = [photo(50, 70), photo(60, 100), photo(33, 97)]  # all pad to the 64x128 bucket
    direct = [np.clip((np.asarray(module.apply(variables, image[None] * 2 - 1))[0] + 1) / 2, 0, 1) for image in images]

    upscaler = Upscaler(module, variables)
    for got, want in zip(upscaler.upscale_many(images), direct, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert [p._cache_size() for p in upscaler._programs.values()] == [1]

    tiler = Upscaler(module, variables, tile=16, force_tiles=True)
    for image, want in zip(images, direct, strict=True):
        np.testing.assert_allclose(tiler.upscale(image), want, atol=1e-5)
    assert [p._cache_size() for p in tiler._programs.values()] == [1]  # edge tiles are padded, never reshaped
    assert len(tiler.compiled_shapes) == 1


def test_large_images_are_tiled_automatically():
    module = Generator(n_feats=4, num_blocks=1, scale=2)
    variables = random_generator_variables(module, seed=3)
    upscaler = Upscaler(module, variables)
    assert not upscaler.fits_whole(2048, 2048)  # a 2048x2048 input never runs as one piece
    image = np.tile(photo(150, 150), (4, 3, 1))  # 600 x 450
    out = upscaler.upscale(image, out_dtype=np.uint8)
    assert out.shape == (1200, 900, 3) and out.dtype == np.uint8
    (shape,) = upscaler.compiled_shapes
    assert shape[1:3] == (upscaler.window, upscaler.window)  # only tile-sized activations, whatever the image


def test_device_side_crop_quantise_and_tile_batches_change_nothing():
    """uint8 made on the device equals the host's rounding of the float result; batching more tiles per call
    (what a GPU does) gives the same pixels with one compiled shape per image; progress counts every tile."""
    module = Generator(n_feats=8, num_blocks=2, scale=2)
    variables = random_generator_variables(module, seed=4)
    image = photo(45, 70)
    reference = Upscaler(module, variables, tile=16, force_tiles=True)  # one tile per device per call (CPU)
    want = reference.upscale(image)
    assert reference.tile_batch == reference.num_devices
    for tile_batch in (1, 3, 8, 64):  # 1 and 3 are padded to the device count; 64 > the image's 15 tiles
        batched = Upscaler(module, variables, tile=16, force_tiles=True, tile_batch=tile_batch)
        seen: list[tuple[int, int]] = []
        got = batched.upscale(image, progress=lambda done, total, seen=seen: seen.append((done, total)))
        np.testing.assert_allclose(got, want, atol=1e-6)
        assert len(batched.compiled_shapes) == 1
        assert seen[-1] == (15, 15) and [d for d, _ in seen] == sorted(d for d, _ in seen)
        got_uint8 = batched.upscale(image, out_dtype=np.uint8)
        assert got_uint8.dtype == np.uint8
        np.testing.assert_array_equal(got_uint8, to_uint8(got))
        # one program for float output, one for uint8
        assert [p._cache_size() for p in batched._programs.values()] == [1, 1]
    whole = Upscaler(module, variables)
    images = [image, photo(20, 33)]
    floats = whole.upscale_many(images)
    for got, want_float in zip(whole.upscale_many(images, out_dtype=np.uint8), floats, strict=True):
        np.testing.assert_array_equal(got, to_uint8(want_float))
    np.testing.assert_array_equal(whole.upscale(image, out_dtype=np.uint8), to_uint8(floats[0]))


def test_upscale_cli_takes_winograd_only_when_the_work_per_compiled_shape_repays_it():
    from jsr.upscale import WINOGRAD_MIN_PIXELS, pays_for_winograd

    module = Generator(n_feats=4, num_blocks=1, scale=2)
    upscaler = Upscaler(module, random_generator_variables(module, seed=6))
    assert WINOGRAD_MIN_PIXELS == 400_000
    assert not pays_for_winograd(upscaler, [(128, 128), None])  # one small photo (and an unreadable file)
    assert pays_for_winograd(upscaler, [(1000, 1000)])  # tiled: one window shape, 1 megapixel
    assert pays_for_winograd(upscaler, [(60, 60)] * 120)  # 120 photos in one bucket: 0.43 megapixels
    assert not pays_for_winograd(upscaler, [(64 * k, 64) for k in range(1, 5)] * 15)  # 0.61 MP over 4 buckets
    assert not pays_for_winograd(upscaler, [None])


def test_bad_upscaler_arguments_are_clear_errors():
    module = Generator(n_feats=4, num_blocks=1, scale=2)
    variables = random_generator_variables(module, seed=5)
    with pytest.raises(ValueError, match="tile_batch"):
        Upscaler(module, variables, tile_batch=0)
    with pytest.raises(ValueError, match="out_dtype"):
        Upscaler(module, variables).upscale(photo(8, 8), out_dtype=np.float16)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        Upscaler(module, variables).upscale(photo(8, 8)[..., 0])
    with pytest.raises(ValueError, match="non-empty"):
        Upscaler(module, variables).upscale_many([photo(8, 8), np.zeros((0, 5, 3))])


def save_mode_zoo(folder):
    """Every awkward kind of input, plus two broken files and one that is not an image at all."""
    rgb = (photo(40, 52) * 255).round().astype(np.uint8)
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "colour.jpg", quality=95)
    Image.fromarray(rgb).save(folder / "colour.webp")
    Image.fromarray(rgb[..., 0]).save(folder / "gray.png")
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(folder / "gray16.png")
    Image.fromarray(rgb).quantize(16).save(folder / "palette.png")
    alpha = np.zeros((40, 52), np.uint8)
    alpha[10:30, 12:40] = 255
    alpha[:, :6] = 128
    Image.fromarray(np.dstack([rgb, alpha])).save(folder / "sub" / "rgba.png") if (
        folder / "sub"
    ).mkdir() is None else 0
    Image.fromarray(rgb).save(folder / "sub" / "photo.tiff")
    (folder / "truncated.png").write_bytes((folder / "gray.png").read_bytes()[:200])
    (folder / "notes.png").write_text("this is a text file with a .png name\n")
    (folder / "readme.txt").write_text("ignored: not an image suffix\n")
    return rgb, alpha


def test_folder_of_awkward_files(tmp_path, small_generator):
    src = tmp_path / "in"
    rgb, alpha = save_mode_zoo(src)
    out = tmp_path / "out"
    result = run_upscale("--weights", small_generator, "--input", src, "--output", out)
    assert result.returncode == 1  # two unreadable files and one name clash
    assert "truncated.png" in result.stderr and "notes.png" in result.stderr
    assert "wrote 6 image(s)" in result.stdout and "3 failed" in result.stdout
    expected_modes = {
        "colour.png": "RGB",
        "gray.png": "RGB",
        "gray16.png": "RGB",
        "palette.png": "RGB",
        "sub/rgba.png": "RGBA",
        "sub/photo.png": "RGB",
    }
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    # colour.jpg and colour.webp both want colour.png: the second is refused, never silently overwritten
    assert "colour.webp" in result.stderr and "colour.png" in written
    assert written == set(expected_modes)
    for name, mode in expected_modes.items():
        im = Image.open(out / name)
        assert (im.mode, im.size) == (mode, (52 * 4, 40 * 4)), name
    # alpha: Pillow's bicubic upscale of the input alpha in float (no 8-bit clipping between the two passes)
    got_alpha = np.asarray(Image.open(out / "sub" / "rgba.png"))[..., 3].astype(int)
    alpha_f = Image.fromarray(alpha.astype(np.float32) / 255).resize((208, 160), Image.Resampling.BICUBIC)
    want_alpha = np.rint(np.clip(np.asarray(alpha_f), 0, 1) * 255).astype(int)
    assert np.abs(got_alpha - want_alpha).max() <= 1
    assert (got_alpha[60:100, 80:140] == 255).all() and (got_alpha[140:, 180:] == 0).all()


def test_background_composites_before_upscaling(tmp_path, small_generator):
    rgba = np.dstack([(photo(40, 52) * 255).round().astype(np.uint8), np.zeros((40, 52), np.uint8)])
    rgba[5:35, 5:45, 3] = 255
    rgba[:, :5, 3] = 90
    Image.fromarray(rgba).save(tmp_path / "sprite.png")
    # the same composite done independently, onto orange, saved as a plain RGB file
    a = rgba[..., 3:4] / 255.0
    flat = np.rint(rgba[..., :3] * a + np.array([255, 136, 0]) * (1 - a)).astype(np.uint8)
    Image.fromarray(flat).save(tmp_path / "flat.png")
    r1 = run_upscale(
        "--weights",
        small_generator,
        "--input",
        tmp_path / "sprite.png",
        "--output",
        tmp_path / "o1",
        "--background",
        "#ff8800",
    )
    r2 = run_upscale("--weights", small_generator, "--input", tmp_path / "flat.png", "--output", tmp_path / "o2")
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    got = np.asarray(Image.open(tmp_path / "o1" / "sprite.png"))
    want = np.asarray(Image.open(tmp_path / "o2" / "flat.png"))
    assert got.shape == (160, 208, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2  # the composite itself rounds once


@pytest.mark.parametrize(
    "args, message",
    [
        (["--weights", "{tmp}/missing"], "does not exist"),
        (["--weights", "{disc}"], "not a generator"),
        (["--weights", "{gen}", "--output", "{tmp}/out.jpg"], "outputs are PNG"),
        (["--weights", "{gen}", "--background", "not-a-colour"], "cannot read colour"),
        (["--weights", "{gen}", "--input", "{tmp}/empty"], "no images"),
    ],
    ids=["missing-weights", "discriminator", "jpeg-output", "bad-colour", "empty-folder"],
)
def test_bad_invocations_fail_clearly_and_write_nothing(tmp_path, small_generator, args, message):
    import jax

    from jsr.checkpoints import save_model
    from jsr.models import Discriminator

    disc = Discriminator(patch_size=16, n_feats=4)
    save_model(
        tmp_path / "disc",
        "discriminator",
        {"patch_size": 16, "n_feats": 4},
        disc.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.float32)),
    )
    (tmp_path / "empty").mkdir()
    Image.fromarray((photo(16, 16) * 255).astype(np.uint8)).save(tmp_path / "in.png")
    values = {"tmp": tmp_path, "gen": small_generator, "disc": tmp_path / "disc"}
    argv = [a.format(**values) for a in args]
    if "--input" not in argv:
        argv += ["--input", str(tmp_path / "in.png")]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "out")]
    result = run_upscale(*argv)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.jpg").exists()


def test_read_image_modes_match_pillow(tmp_path):
    rgb, alpha = save_mode_zoo(tmp_path / "zoo")
    gray16 = read_image(tmp_path / "zoo" / "gray16.png")
    assert gray16.bits == 16 and gray16.alpha is None
    np.testing.assert_allclose(gray16.rgb[..., 0], rgb[..., 1].astype(np.float64) * 257 / 65535.0, atol=1e-6)
    rgba = read_image(tmp_path / "zoo" / "sub" / "rgba.png")
    np.testing.assert_array_equal(np.rint(rgba.alpha * 255), alpha)
    white = composite(rgba.rgb, rgba.alpha, (1.0, 1.0, 1.0))
    assert np.all(white[alpha == 0] == 1.0)


@pytest.mark.parametrize("arch, expected", [("srresnet", "winograd"), ("rrdbnet", "xla"), ("pan", "xla")])
def test_auto_conv_on_cpu_follows_the_architectures_measured_preference(arch, expected):
    """'auto' takes Winograd only where benchmarks/archs.py measured it faster than XLA's convs (cpu_winograd)."""
    import jax

    from jsr import archs

    small = {"srresnet": {"n_feats": 16, "num_blocks": 1}, "rrdbnet": {"num_feat": 16, "num_block": 1}, "pan": {}}
    module = archs.get(arch).build(small[arch])
    variables = module.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.float32))
    assert archs.get(arch).cpu_winograd == (expected == "winograd")
    assert Upscaler(module, variables, conv="auto").module.conv == expected
