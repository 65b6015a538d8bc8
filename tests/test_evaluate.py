"""`python -m jsr.evaluate` end to end: its numbers against direct scikit-image / numpy / Flax computations."""

import csv
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_generator_dir
from PIL import Image, ImageFilter
from skimage import data
from test_metrics import TOLERANCE, skimage_reference

from jsr import evaluate
from jsr.checkpoints import save_model
from jsr.models import VGG19Features

SCALE = 4
# HR crops of bundled photos; no side is a multiple of the scale, so the folder spec must crop them
CROPS = {
    "astronaut": (slice(30, 173), slice(100, 262)),  # 143 x 162
    "chelsea": (slice(20, 141), slice(100, 221)),  # 121 x 121
    "coffee": (slice(50, 147), slice(200, 330)),  # 97 x 130
}


def photo(name):
    rows, cols = CROPS[name]
    return np.ascontiguousarray(getattr(data, name)()[rows, cols, :3])


def crop_and_lr(hr):
    """The folder convention, written directly with Pillow: crop bottom/right to a multiple of 4, bicubic / 4."""
    h, w = hr.shape[:2]
    hr = hr[: h - h % SCALE, : w - w % SCALE]
    lr = np.asarray(Image.fromarray(hr).resize((hr.shape[1] // SCALE, hr.shape[0] // SCALE), Image.BICUBIC))
    return hr, lr


def save_png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """hr/ (uncropped PNGs), sr_bicubic/ and sr_blur/ (precomputed 'methods'), a small generator; plus the arrays."""
    root = tmp_path_factory.mktemp("eval")
    pairs = {}
    for name in CROPS:
        hr_full = photo(name)
        save_png(root / "hr" / f"{name}.png", hr_full)
        hr, lr = crop_and_lr(hr_full)
        bicubic = np.asarray(Image.fromarray(lr).resize((hr.shape[1], hr.shape[0]), Image.BICUBIC))
        blur = np.asarray(Image.fromarray(hr).filter(ImageFilter.GaussianBlur(1.2)))
        save_png(root / "sr_bicubic" / f"{name}.png", bicubic)
        save_png(root / "sr_blur" / f"{name}.png", blur)
        pairs[name] = {"hr": hr, "lr": lr, "bic": bicubic, "blur": blur}
    module, variables = make_generator_dir(root / "gen", seed=3, n_feats=8, num_blocks=1, scale=SCALE)
    return root, pairs, module, variables


def direct_model_output(module, variables, lr):
    """The generator applied to the whole LR image (no padding, no batching), quantised with numpy."""
    sr = module.apply(variables, jnp.asarray(lr[None], jnp.float32) / 127.5 - 1.0)
    return np.clip(np.rint((np.asarray(sr[0], np.float64) + 1) / 2 * 255), 0, 255).astype(np.uint8)


def assert_close(got, want, where, tolerance=TOLERANCE):
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=tolerance[name]), (where, name)


def test_cli_reproduces_direct_metrics(photos, tmp_path):
    root, pairs, module, variables = photos
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable, "-m", "jsr.evaluate", "--model", f"small={root / 'gen'}",
            "--sr", f"bic={root / 'sr_bicubic'}", "--sr", f"blur={root / 'sr_blur'}",
            "--dataset", f"folder:{root / 'hr'}", "--output", str(out), "--figures", "2", "--zoom", "10,20,24",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "VGG metrics (vgg22, vgg54, study_vgg22, study_vgg54) omitted" in result.stdout
    assert "| model | MSE | PSNR-Y (dB) | PSNR-RGB (dB) | SSIM-Y | SSIM-RGB |" in result.stdout

    results = json.loads((out / "results.json").read_text())["models"]
    assert list(results) == ["small", "bic", "blur", "bicubic"]
    for name, method in (("bic", "bic"), ("blur", "blur"), ("bicubic", "bic")):
        per_image = results[name]["per_image"]
        assert sorted(per_image) == sorted(CROPS)
        for stem, p in pairs.items():
            assert set(per_image[stem]) == {"mse", "psnr_y", "psnr_rgb", "ssim_y", "ssim_rgb"}
            assert_close(per_image[stem], skimage_reference(p[method], p["hr"], SCALE), (name, stem))
    assert results["bicubic"]["per_image"] == results["bic"]["per_image"]  # Pillow bicubic either way
    # the blur is a better "method" than bicubic here: a sanity check that rows are not mixed up
    assert results["blur"]["mean"]["psnr_y"] > results["bicubic"]["mean"]["psnr_y"] + 1

    # the generator: the CLI pads, batches and shards; the reference runs it on each whole image. Convolutions on a
    # padded canvas sum in another order than on the image, so a few values a hair from a rounding tie round the
    # other way, depending on the machine's kernels (measured: MSE 1.2e-7 off on one Xeon): MSE to 1e-6 here
    model_tolerance = TOLERANCE | {"mse": 1e-6}
    for stem, p in pairs.items():
        want = skimage_reference(direct_model_output(module, variables, p["lr"]), p["hr"], SCALE)
        assert_close(results["small"]["per_image"][stem], want, ("small", stem), model_tolerance)
    for row in results.values():
        for metric, value in row["mean"].items():
            assert value == pytest.approx(np.mean([v[metric] for v in row["per_image"].values()]), abs=1e-12)

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 * (len(CROPS) + 1)
    mean_bic = next(r for r in rows if r["model"] == "bic" and r["image"] == evaluate.MEAN_ROW)
    assert float(mean_bic["psnr_y"]) == pytest.approx(results["bic"]["mean"]["psnr_y"], abs=1e-9)
    assert (out / "results.md").read_text() in result.stdout

    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["astronaut.png", "chelsea.png"]
    figure = np.asarray(Image.open(out / "figures" / "astronaut.png"))
    hr = pairs["astronaut"]["hr"]
    h, w = hr.shape[:2]
    panels = 6  # HR, small, bic, blur, bicubic, LR
    assert figure.shape[1] == panels * w + (panels + 1) * 6
    # the panels are there, unscaled, below their labels: HR (under the zoom mark) and bicubic (5th)
    top = next(r for r in range(figure.shape[0] - h) if np.array_equal(figure[r + 40 : r + h, 6 : 6 + w], hr[40:]))
    left = 6 + 4 * (w + 6)
    np.testing.assert_array_equal(figure[top : top + h, left : left + w], pairs["astronaut"]["bic"])


def test_vgg_metrics_in_evaluate_equal_direct_computation(photos, tmp_path, capsys):
    """Random VGG19 weights saved as a model dir (as the converter writes); images whose sizes are not multiples
    of 16, so the padded, masked, sharded path must equal VGG19Features on each whole image (bicubic row)."""
    _, pairs, _, _ = photos
    vgg = VGG19Features()
    variables = jax.tree.map(np.asarray, jax.jit(vgg.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    save_model(tmp_path / "vgg", "vgg19", {}, variables)
    small = {"a": pairs["coffee"]["hr"][:44, :52], "b": pairs["chelsea"]["hr"][:36, :36]}
    for stem, hr in small.items():
        save_png(tmp_path / "hr" / f"{stem}.png", hr)
    argv = ["--dataset", f"folder:{tmp_path / 'hr'}", "--output", str(tmp_path / "out")]
    assert evaluate.main([*argv, "--vgg", str(tmp_path / "vgg"), "--figures", "0", "--table", "study"]) == 0
    assert "| model | MSE | PSNR-Y (dB) | study VGG22 | study VGG54 |" in capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "results.json").read_text())["models"]["bicubic"]["per_image"]

    apply = jax.jit(lambda v, x: vgg.apply(v, x, taps=("relu2_2", "relu5_4")))
    for stem, hr in small.items():
        _, lr = crop_and_lr(hr)
        sr = np.asarray(Image.fromarray(lr).resize((hr.shape[1], hr.shape[0]), Image.BICUBIC))
        fs = apply(variables, jnp.asarray(sr[None], jnp.float32) / 127.5 - 1)
        fh = apply(variables, jnp.asarray(hr[None], jnp.float32) / 127.5 - 1)
        pixel_mse = np.mean((sr / 255.0 - hr / 255.0) ** 2)
        assert results[stem]["mse"] == pytest.approx(pixel_mse, rel=1e-5)
        for metric, tap in (("vgg22", "relu2_2"), ("vgg54", "relu5_4")):
            want = np.mean((np.asarray(fs[tap], np.float64) - np.asarray(fh[tap], np.float64)) ** 2)
            assert want > 0
            assert results[stem][metric] == pytest.approx(want, rel=1e-4), (stem, metric)
            assert results[stem][f"study_{metric}"] == pytest.approx(pixel_mse + 0.006 * want, rel=1e-4)


def test_compiles_are_bounded_for_many_mixed_sizes(photos, tmp_path):
    """100 images of ~100 different sizes: compiles depend on the canvas buckets, not on the number of images."""
    _, _, _, _ = photos
    rng = np.random.default_rng(0)
    source = data.astronaut()
    sizes = set()
    for i in range(100):
        h, w = (int(v) for v in rng.integers(40, 121, 2))
        y, x = (int(v) for v in rng.integers(0, 512 - 121, 2))
        save_png(tmp_path / "hr" / f"{i:03d}.png", source[y : y + h, x : x + w])
        sizes.add((h - h % SCALE, w - w % SCALE))
    assert len(sizes) > 60
    make_generator_dir(tmp_path / "gen", seed=1, n_feats=4, num_blocks=1, scale=SCALE)

    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        args = evaluate.build_parser().parse_args(
            ["--model", f"g={tmp_path / 'gen'}", "--dataset", f"folder:{tmp_path / 'hr'}"]
            + ["--output", str(tmp_path / "out"), "--figures", "0"]
        )
        run = evaluate.evaluate(args)
    finally:
        unregister = getattr(jax._src.monitoring, "_unregister_event_duration_listener_by_callback", None)
        if unregister is not None:
            unregister(listener)
    assert all(len(run.results.per_image[m]) == 100 for m in ("g", "bicubic"))
    # HR sides 40..120 -> canvases 64 or 128 a side: at most 4 metric shapes; LR sides <= 30 -> one generator canvas
    assert run.metric_compiles <= 4
    assert run.upscaler_compiles == {"g": 1}
    # every XLA compile during the run (the metric and generator shapes, a few small helpers), not 100s
    assert len(compiles) <= run.metric_compiles + 1 + 4, f"{len(compiles)} XLA compiles for 100 images"


@pytest.fixture
def error_case(photos, tmp_path):
    root, _, _, _ = photos
    (tmp_path / "empty").mkdir()
    (tmp_path / "partial").mkdir()
    save_png(tmp_path / "partial" / "coffee.png", np.zeros((96, 128, 3), np.uint8))
    return root, tmp_path


@pytest.mark.parametrize(
    "case,expected",
    [
        ("empty", ["holds no images", "empty"]),
        ("no_folder", ["does not exist"]),
        ("bad_spec", ["bad --dataset", "tfds:NAME:SPLIT"]),
        ("bad_kind", ["unknown kind 'zip'"]),
        ("pairs_one_folder", ["pairs:HR_DIR,LR_DIR"]),
        ("missing_checkpoint", ["--model g=", "does not exist"]),
        ("not_a_model", ["not a jsr model directory"]),
        ("sr_stems", ["no output for 2 of 3", "astronaut", "chelsea"]),
        ("sr_bad_syntax", ["expected NAME=PATH"]),
        ("missing_vgg", ["--vgg", "does not exist"]),
        ("duplicate_name", ["two methods are named 'x'"]),
        ("bad_zoom", ["bad --zoom"]),
    ],
)
def test_errors_are_clear_and_write_nothing(error_case, case, expected, capsys):
    root, tmp = error_case
    hr = f"folder:{root / 'hr'}"
    argv = {
        "empty": ["--dataset", f"folder:{tmp / 'empty'}"],
        "no_folder": ["--dataset", f"folder:{tmp / 'nope'}"],
        "bad_spec": ["--dataset", "folder"],
        "bad_kind": ["--dataset", f"zip:{root}"],
        "pairs_one_folder": ["--dataset", f"pairs:{root / 'hr'}"],
        "missing_checkpoint": ["--dataset", hr, "--model", f"g={tmp / 'nope'}"],
        "not_a_model": ["--dataset", hr, "--model", f"g={tmp / 'empty'}"],
        "sr_stems": ["--dataset", hr, "--sr", f"x={tmp / 'partial'}"],
        "sr_bad_syntax": ["--dataset", hr, "--sr", str(tmp / "partial")],
        "missing_vgg": ["--dataset", hr, "--vgg", str(tmp / "nope")],
        "duplicate_name": ["--dataset", hr, "--sr", f"x={root / 'sr_blur'}", "--sr", f"x={root / 'sr_bicubic'}"],
        "bad_zoom": ["--dataset", hr, "--zoom", "1,2"],
    }[case]
    out = tmp / "out"
    assert evaluate.main([*argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for text in expected:
        assert text in err, (text, err)
    assert not out.exists()


def test_sr_size_mismatch_is_listed(photos, tmp_path, capsys):
    root, pairs, _, _ = photos
    for stem, p in pairs.items():
        image = p["blur"] if stem != "chelsea" else p["blur"][:-4]
        save_png(tmp_path / "sr" / f"{stem}.png", image)
    code = evaluate.main(
        ["--dataset", f"folder:{root / 'hr'}", "--sr", f"x={tmp_path / 'sr'}"] + ["--output", str(tmp_path / "o")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "chelsea.png" in err and "differ in size" in err and "astronaut" not in err
    assert not (tmp_path / "o").exists()


def test_pairs_and_tfds_specs(photos, tmp_path, monkeypatch, capsys):
    """pairs:HR,LR reads given LR files; tfds:NAME:SPLIT reads a data source's hr/lr/id records."""
    import tensorflow_datasets as tfds

    _, pairs, _, _ = photos
    for stem, p in pairs.items():
        save_png(tmp_path / "HR" / f"{stem}.png", p["hr"])
        save_png(tmp_path / "LR" / f"{stem}.png", p["lr"])
    assert (
        evaluate.main(["--dataset", f"pairs:{tmp_path / 'HR'},{tmp_path / 'LR'}", "--output", str(tmp_path / "a")]) == 0
    )
    got = json.loads((tmp_path / "a" / "results.json").read_text())["models"]["bicubic"]["per_image"]
    for stem, p in pairs.items():
        assert_close(got[stem], skimage_reference(p["bic"], p["hr"], SCALE), stem)

    calls = []
    records = [{"hr": p["hr"], "lr": p["lr"], "id": stem.encode()} for stem, p in pairs.items()]

    def fake_data_source(name, split, data_dir=None, download=True):
        calls.append((name, split, data_dir, download))
        return records

    monkeypatch.setattr(tfds, "data_source", fake_data_source)
    argv = ["--dataset", "tfds:pokemon/lanczos:validation[:3]", "--data_dir", str(tmp_path / "tfds")]
    assert evaluate.main([*argv, "--output", str(tmp_path / "b"), "--table", "study"]) == 0
    assert calls == [("pokemon/lanczos", "validation[:3]", str(tmp_path / "tfds"), False)]
    assert "| model | MSE | PSNR-Y (dB) |\n" in capsys.readouterr().out  # the seed table; without VGG, 2 columns
    got = json.loads((tmp_path / "b" / "results.json").read_text())["models"]["bicubic"]["per_image"]
    for stem, p in pairs.items():
        assert_close(got[stem], skimage_reference(p["bic"], p["hr"], SCALE), stem)

    def missing(*args, **kwargs):
        raise FileNotFoundError("not prepared")

    monkeypatch.setattr(tfds, "data_source", missing)
    assert evaluate.main(["--dataset", "tfds:pokemon:test", "--output", str(tmp_path / "c")]) == 2
    assert "cannot open TFDS 'pokemon' split 'test'" in capsys.readouterr().err

    monkeypatch.setattr(tfds, "data_source", lambda *args, **kwargs: records + records[:1])
    assert evaluate.main(["--dataset", "tfds:pokemon:test", "--output", str(tmp_path / "d")]) == 2
    assert "two records are named 'astronaut'" in capsys.readouterr().err
    assert not (tmp_path / "d" / "results.json").exists()


def test_tfds_pokemon_validation_split_end_to_end(tmp_path, capsys):
    """The project's pokemon builder prepared from synthetic RGBA 'artwork', then tfds:pokemon/lanczos:validation."""
    from jsr.data.sources import tfds_with_builders

    tfds = tfds_with_builders()
    source = data.astronaut()
    for i in range(1, 11):
        rgba = np.dstack([source[20 * i : 20 * i + 300, 10 * i : 10 * i + 300], np.full((300, 300), 255, np.uint8)])
        save_png(tmp_path / "manual" / f"{i}.png", rgba)
    builder = tfds.builder("pokemon/lanczos", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
    records = tfds.data_source("pokemon/lanczos", split="validation", data_dir=str(tmp_path / "tfds"))
    expected = {}
    for record in records:
        stem = record["id"].decode() if isinstance(record["id"], bytes) else str(record["id"])
        hr, lr = np.asarray(record["hr"]), np.asarray(record["lr"])
        expected[stem] = skimage_reference(np.asarray(Image.fromarray(lr).resize((256, 256), Image.BICUBIC)), hr, SCALE)
    assert sorted(expected) == ["3", "8"]  # ids with id % 5 == 3

    argv = ["--dataset", "tfds:pokemon/lanczos:validation", "--data_dir", str(tmp_path / "tfds")]
    assert evaluate.main([*argv, "--output", str(tmp_path / "out"), "--figures", "1"]) == 0
    got = json.loads((tmp_path / "out" / "results.json").read_text())["models"]["bicubic"]["per_image"]
    assert sorted(got) == ["3", "8"]
    for stem, want in expected.items():
        assert_close(got[stem], want, stem)
    assert len(list((tmp_path / "out" / "figures").iterdir())) == 1
