"""jsr.perceptual against the official lpips package (0.1.4) on real images, with the real ImageNet trunks.

The weights are ../shared/referee/perceptual/lpips_{vgg16,alexnet}.npz (fixture ``referee``); the reference is
``lpips.LPIPS`` with its own v0.1 heads and those trunks (tests/torch_lpips_reference.py, a stand-in torchvision).
"""

import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

from jsr import perceptual
from jsr.errors import UserError

pytestmark = pytest.mark.referee
NETS = ("vgg16", "alexnet")
SET5 = ("baby", "bird", "butterfly", "head", "woman")
SIZES = ((64, 64), (100, 76))  # (height, width); 100x76 is no multiple of 16 (nor of AlexNet's stride 4)


def weights_file(referee, net):
    return referee / "perceptual" / f"lpips_{net}.npz"


@pytest.fixture(scope="module")
def loaded(referee):
    return {net: perceptual.load_lpips(weights_file(referee, net)) for net in NETS}


@pytest.fixture(scope="module")
def ref(referee):
    """tests/torch_lpips_reference (needs the lpips package) and the two reference LPIPS modules built from it."""
    if importlib.util.find_spec("lpips") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but the lpips package is missing: pip install --no-deps lpips==0.1.4")
        pytest.skip("pip install --no-deps lpips==0.1.4")
    import torch_lpips_reference

    models = {net: torch_lpips_reference.reference_lpips(net, weights_file(referee, net)) for net in NETS}
    return torch_lpips_reference, models


@pytest.fixture(scope="module")
def set5_pairs(referee):
    """name -> (HR, degraded) float32 HWC in [0, 1]: the X4 MATLAB-bicubic LR upscaled by PIL bicubic, + noise 0.02."""
    rng = np.random.default_rng(0)
    pairs = {}
    for name in SET5:
        hr = Image.open(referee / "images" / "Set5" / "HR" / f"{name}.png").convert("RGB")
        lr = Image.open(referee / "images" / "Set5" / "LR_bicubic" / "X4" / f"{name}x4.png").convert("RGB")
        up = np.asarray(lr.resize(hr.size, Image.BICUBIC), np.float32) / 255.0
        noisy = np.clip(up + rng.normal(0.0, 0.02, up.shape).astype(np.float32), 0.0, 1.0)
        pairs[name] = (np.asarray(hr, np.float32) / 255.0, noisy)
    return pairs


def crops(pairs, size):
    """(degraded, HR) NHWC batches: the central ``size`` crop of each Set5 image."""
    h, w = size
    sr, hr = [], []
    for a, b in pairs.values():
        top, left = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
        hr.append(a[top : top + h, left : left + w])
        sr.append(b[top : top + h, left : left + w])
    return np.stack(sr), np.stack(hr)


@pytest.mark.torch
@pytest.mark.parametrize("net", NETS)
def test_npz_heads_are_the_lpips_package_v01_heads(referee, ref, loaded, net):
    module, models = ref
    official = module.package_heads(net)
    used = [lin.model[-1].weight.detach().numpy().reshape(-1) for lin in models[net].lins]
    with np.load(weights_file(referee, net)) as z:
        npz = [z[f"NetLinLayer_{i}/Conv_0/kernel"].reshape(-1) for i in range(5)]
    for i in range(5):
        np.testing.assert_allclose(npz[i], official[i], rtol=0, atol=1e-6)  # seen: identical
        np.testing.assert_array_equal(used[i], official[i])  # the reference really runs the package's heads
        np.testing.assert_array_equal(np.asarray(loaded[net].heads[i]), npz[i])


@pytest.mark.torch
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("net", NETS)
def test_lpips_equals_the_lpips_package_on_set5(ref, loaded, set5_pairs, net, size):
    module, models = ref
    sr, hr = crops(set5_pairs, size)
    want = module.lpips_distances(models[net], sr, hr)
    got = np.asarray(perceptual.lpips(loaded[net], sr, hr))
    assert got.shape == (len(SET5),) and got.dtype == np.float32
    assert want.min() > 0.02  # real, clearly non-zero distances
    # seen: max |diff| 6.0e-8 (distances 0.12 .. 0.36) at 64x64, 100x76 and 128x128
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_perceptual_distances_equal_torch(ref, loaded, set5_pairs, size):
    module, models = ref
    sr, hr = crops(set5_pairs, size)
    got = {
        k: np.asarray(v) for k, v in perceptual.perceptual_distances(loaded["vgg16"], loaded["alexnet"], sr, hr).items()
    }
    assert set(got) == {"lpips_vgg", "lpips_alex", "vgg16_relu2_2_mse", "vgg16_relu5_3_mse"}
    fs, fh = module.trunk_features(models["vgg16"], sr), module.trunk_features(models["vgg16"], hr)
    for tap in ("relu2_2", "relu5_3"):
        want = np.mean((fs[tap].astype(np.float64) - fh[tap]) ** 2, axis=(1, 2, 3))
        np.testing.assert_allclose(got[f"vgg16_{tap}_mse"], want, rtol=1e-5)  # seen: relative 5.8e-7
    for net, key in (("vgg16", "lpips_vgg"), ("alexnet", "lpips_alex")):
        np.testing.assert_allclose(got[key], module.lpips_distances(models[net], sr, hr), rtol=0, atol=1e-5)
    # the features themselves, every tap of both trunks (seen: |diff| <= 8.7e-7 of the tap's largest value)
    for net in NETS:
        want = module.trunk_features(models[net], sr)
        for tap, f in perceptual.features(loaded[net], sr).items():
            np.testing.assert_allclose(np.asarray(f), want[tap], rtol=0, atol=1e-5 * np.abs(want[tap]).max())
    only_alex = perceptual.perceptual_distances(None, loaded["alexnet"], sr, hr)
    assert set(only_alex) == {"lpips_alex"}


def test_lpips_of_an_image_and_itself_is_zero(loaded, set5_pairs):
    sr, hr = crops(set5_pairs, (64, 64))
    for net in NETS:
        assert np.all(np.asarray(perceptual.lpips(loaded[net], hr, hr)) == 0)
    same = perceptual.perceptual_distances(loaded["vgg16"], loaded["alexnet"], hr, hr)
    assert all(np.all(np.asarray(v) == 0) for v in same.values())
    with pytest.raises(ValueError, match="at least 31 pixels"):
        perceptual.lpips(loaded["alexnet"], hr[:, :30], hr[:, :30])


def _bad_files(referee, tmp_path):
    """kind -> a bad weights file made from the real AlexNet npz."""
    with np.load(weights_file(referee, "alexnet")) as z:
        arrays = {k: z[k] for k in z.files}
    out = {}
    out["missing key"] = tmp_path / "missing.npz"
    np.savez(out["missing key"], **{k: v for k, v in arrays.items() if k != "NetLinLayer_4/Conv_0/kernel"})
    out["wrong shape"] = tmp_path / "shape.npz"
    np.savez(out["wrong shape"], **{**arrays, "AlexNet_0/Conv_2/kernel": arrays["AlexNet_0/Conv_2/kernel"][:, :, :64]})
    out["extra key"] = tmp_path / "extra.npz"
    np.savez(out["extra key"], **arrays, **{"NetLinLayer_5/Conv_0/kernel": np.zeros((1, 1, 8, 1), np.float32)})
    out["not npz"] = tmp_path / "weights.npz"
    out["not npz"].write_text("not an archive\n")
    out["truncated"] = tmp_path / "truncated.npz"
    out["truncated"].write_bytes(weights_file(referee, "alexnet").read_bytes()[:100_000])
    out["npy"] = tmp_path / "array.npy"
    np.save(out["npy"], np.zeros(3, np.float32))
    out["absent"] = tmp_path / "absent.npz"
    return out


def test_bad_weights_files_raise_a_user_error_naming_the_file(referee, tmp_path):
    for kind, path in _bad_files(referee, tmp_path).items():
        with pytest.raises(UserError) as e:
            perceptual.load_lpips(path)
        message = str(e.value)
        assert str(path) in message and "\n" not in message, (kind, message)
        assert "LPIPS v0.1 weights file" in message, (kind, message)


def test_jsr_evaluate_adds_the_lpips_columns_per_image(referee, loaded, set5_pairs, tmp_path, capsys):
    """`jsr-evaluate --lpips` scores other methods' outputs with the same LPIPS as the functions above (whole,
    unpadded images of several sizes) and refuses a bad weights file in one line."""
    import json

    from jsr.evaluate import main as evaluate_main

    (tmp_path / "hr").mkdir()
    (tmp_path / "sr").mkdir()
    expected = {}
    for name, size in zip(("baby", "bird"), ((100, 76), (64, 88)), strict=True):
        degraded, hr = (np.round(x[0] * 255).astype(np.uint8) for x in crops({name: set5_pairs[name]}, size))
        Image.fromarray(hr).save(tmp_path / "hr" / f"{name}.png")
        Image.fromarray(degraded).save(tmp_path / "sr" / f"{name}.png")
        a, b = (x[None].astype(np.float32) / 255.0 for x in (degraded, hr))
        expected[name] = {f"lpips_{k}": float(perceptual.lpips(loaded[n], a, b)[0]) for k, n in
                          (("alex", "alexnet"), ("vgg", "vgg16"))}  # fmt: skip
    argv = ["--dataset", f"folder:{tmp_path / 'hr'}", "--sr", f"noisy={tmp_path / 'sr'}", "--figures", "0"]
    argv += ["--lpips", str(weights_file(referee, "alexnet")), "--lpips", str(weights_file(referee, "vgg16"))]
    assert evaluate_main([*argv, "--output", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    for name, values in expected.items():
        got = result["models"]["noisy"]["per_image"][name]
        for key, value in values.items():
            assert got[key] == pytest.approx(value, abs=1e-6), (name, key)
        assert got["vgg16_relu5_3_mse"] > 0
    assert "LPIPS-alex" in (tmp_path / "out" / "results.md").read_text()
    bad = tmp_path / "bad.npz"
    bad.write_text("not weights\n")
    capsys.readouterr()
    assert evaluate_main([*argv, "--lpips", str(bad), "--output", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]
