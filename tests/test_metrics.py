"""jsr.metrics against independent references: scikit-image (PSNR, SSIM, Y), numpy, and a PyTorch VGG19."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageFilter
from skimage import data
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from jsr import metrics

SCALE = 4


def photo(name):
    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    return getattr(data, name)()[..., :3]


def degrade(hr, how):
    """uint8 HR -> a uint8 'SR' of the same size: bicubic x4 down and up, a blur, or noise."""
    h, w = hr.shape[:2]
    im = Image.fromarray(hr)
    if how == "bicubic":
        return np.asarray(im.resize((w // SCALE, h // SCALE), Image.BICUBIC).resize((w, h), Image.BICUBIC))
    if how == "blur":
        return np.asarray(im.filter(ImageFilter.GaussianBlur(1.5)))
    noise = np.random.default_rng(0).normal(0, 6, hr.shape)
    return np.clip(hr + noise, 0, 255).round().astype(np.uint8)


def skimage_reference(sr, hr, border):
    """Paper convention with scikit-image, in float64: crop, then PSNR/SSIM on RGB [0,1] and on Y [16,235]."""
    a = hr.astype(np.float64) / 255
    b = sr.astype(np.float64) / 255
    if border:
        a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    ya, yb = rgb2ycbcr(a)[..., 0], rgb2ycbcr(b)[..., 0]
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    return {
        "psnr_rgb": peak_signal_noise_ratio(a, b, data_range=1.0),
        "psnr_y": peak_signal_noise_ratio(ya, yb, data_range=255.0),
        "ssim_rgb": structural_similarity(a, b, channel_axis=-1, data_range=1.0, **kw),
        "ssim_y": structural_similarity(ya, yb, data_range=255.0, **kw),
        "mse": np.mean((sr.astype(np.float64) / 255 - hr.astype(np.float64) / 255) ** 2),
    }


def unit(x):
    return jnp.asarray(np.asarray(x, np.float32) / 255.0)


TOLERANCE = {"psnr_rgb": 1e-4, "psnr_y": 1e-4, "ssim_rgb": 1e-5, "ssim_y": 1e-5, "mse": 1e-7}


def assert_matches(got, want, where=""):
    for name, value in want.items():
        assert abs(float(got[name]) - value) <= TOLERANCE[name], (where, name, float(got[name]), value)


def test_rgb_to_y_equals_skimage():
    x = data.astronaut().astype(np.float64) / 255
    got = np.asarray(metrics.rgb_to_y(jnp.asarray(x, jnp.float32)))
    assert got.shape == (512, 512, 1)
    np.testing.assert_allclose(got[..., 0], rgb2ycbcr(x)[..., 0], atol=1e-4, rtol=0)
    assert 16 - 1e-4 <= got.min() and got.max() <= 235 + 1e-4


@pytest.mark.parametrize(
    "name,how,border",
    [
        ("astronaut", "bicubic", 4),
        ("coffee", "blur", 4),
        ("chelsea", "noise", 4),
        ("motorcycle", "bicubic", 0),
        ("immunohistochemistry", "blur", 3),
    ],
)
def test_psnr_ssim_equal_skimage_on_photos(name, how, border):
    hr = photo(name)
    h, w = hr.shape[:2]
    hr = np.ascontiguousarray(hr[: h - h % SCALE, : w - w % SCALE])
    sr = degrade(hr, how)
    want = skimage_reference(sr, hr, border)
    assert 15 < want["psnr_y"] < 45 and 0.3 < want["ssim_y"] < 0.99  # a meaningful, not degenerate, comparison
    assert want["psnr_y"] - want["psnr_rgb"] > 0.3  # Y and RGB really differ: a swap would fail
    got = jax.jit(lambda s, r: metrics.all_metrics(s, r, border))(unit(sr[None]), unit(hr[None]))
    assert_matches({k: v[0] for k, v in got.items()}, want, name)
    # the single-metric functions agree with all_metrics
    psnr_y = jax.jit(metrics.psnr, static_argnames=("border", "on"))(unit(sr[None]), unit(hr[None]), border, "y")
    assert float(psnr_y[0]) == pytest.approx(want["psnr_y"], abs=1e-4)


def test_padded_batch_with_valid_sizes_equals_each_image_alone():
    """Mixed sizes in one zero-padded canvas (garbage in the padding): each result equals skimage on the image."""
    rng = np.random.default_rng(1)
    crops = [data.astronaut()[10:107, 20:151], data.coffee()[50:114, 100:140], data.chelsea()[:128, :128]]
    canvas_h, canvas_w = 144, 160
    sr_canvas = rng.uniform(0, 1, (len(crops), canvas_h, canvas_w, 3)).astype(np.float32)
    hr_canvas = rng.uniform(0, 1, (len(crops), canvas_h, canvas_w, 3)).astype(np.float32)
    valid = np.zeros((len(crops), 2), np.int32)
    wants = []
    for k, hr in enumerate(crops):
        sr = degrade(np.ascontiguousarray(hr), "blur")
        h, w = hr.shape[:2]
        sr_canvas[k, :h, :w], hr_canvas[k, :h, :w] = sr / 255.0, hr / 255.0
        valid[k] = (h, w)
        wants.append(skimage_reference(sr, hr, SCALE))
    got = jax.jit(lambda s, r, v: metrics.all_metrics(s, r, SCALE, v))(sr_canvas, hr_canvas, valid)
    for k, want in enumerate(wants):
        assert_matches({name: v[k] for name, v in got.items()}, want, f"image {k}")


def test_quantise_and_mse_match_numpy():
    x = np.random.default_rng(2).uniform(-0.1, 1.1, (2, 9, 7, 3)).astype(np.float32)
    x[0, 0, 0] = [0.5 / 255, 1.5 / 255, 2.5 / 255]  # ties round to even, as np.rint
    want = np.clip(np.rint(np.clip(x, 0, 1) * 255), 0, 255) / 255
    np.testing.assert_allclose(np.asarray(metrics.quantise(jnp.asarray(x))), want, atol=1e-7)
    y = np.random.default_rng(3).uniform(0, 1, x.shape).astype(np.float32)
    want_mse = ((x.astype(np.float64) - y) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(metrics.mse(jnp.asarray(x), jnp.asarray(y))), want_mse, rtol=1e-6)


def test_identical_images_give_infinite_psnr_and_unit_ssim():
    hr = unit(data.chelsea()[None, :64, :64])
    got = jax.jit(lambda a, b: metrics.all_metrics(a, b, 4))(hr, hr)
    assert np.isinf(float(got["psnr_y"][0])) and np.isinf(float(got["psnr_rgb"][0]))
    assert float(got["ssim_rgb"][0]) == pytest.approx(1.0, abs=1e-6)
    assert float(got["ssim_y"][0]) == pytest.approx(1.0, abs=1e-6)


def test_bad_arguments_are_named():
    x = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(ValueError, match="'y' or 'rgb'"):
        metrics.psnr(x, x, on="lab")
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 3)))


# ----------------------------------------------------------------------------------------------- VGG (PyTorch)


@pytest.fixture(scope="module")
def converted_vgg(tmp_path_factory):
    """torchvision-layout VGG19 with random weights -> the project's converter -> (module, variables, torch model)."""
    import torch
    import torch_reference as ref

    from jsr.checkpoints import load_model
    from jsr.convert import main as convert_main

    torch.manual_seed(5)
    model = ref.VGG19().eval()
    directory = tmp_path_factory.mktemp("vgg")
    torch.save(model.state_dict(), directory / "vgg19.pth")
    assert (
        convert_main(["--model", "vgg19", "--input", str(directory / "vgg19.pth"), "--output", str(directory / "o")])
        == 0
    )
    module, variables = load_model(directory / "o")
    return module, variables, model


def torch_feature_mse(model, sr, hr):
    """The seed's definition in PyTorch: [0,1] images, ImageNet normalisation, MSE of features after the ReLU."""
    import torch

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def feats(x):
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32))
        return model.taps((t - mean) / std, {8, 35})

    with torch.no_grad():
        fs, fh = feats(sr), feats(hr)
        return {tap: float(((fs[i].double() - fh[i].double()) ** 2).mean()) for tap, i in (("vgg22", 8), ("vgg54", 35))}


@pytest.mark.torch
def test_vgg_metrics_equal_pytorch_reference(converted_vgg):
    module, variables, model = converted_vgg
    hrs = [data.astronaut()[100:148, 200:264], data.coffee()[40:77, 300:361]]  # 48x64 and 37x61 (odd sizes)
    srs = [degrade(np.ascontiguousarray(hr), "blur") for hr in hrs]
    wants = [torch_feature_mse(model, sr / 255.0, hr / 255.0) for sr, hr in zip(srs, hrs, strict=True)]
    for want in wants:
        assert want["vgg22"] > 0 and want["vgg54"] > 0
    # unpadded, one image at a time
    feature_mses = jax.jit(lambda v, s, r: metrics.vgg_feature_mses(module, v, s, r))
    for sr, hr, want in zip(srs, hrs, wants, strict=True):
        got = feature_mses(variables, unit(sr[None]), unit(hr[None]))
        assert float(got["relu2_2"][0]) == pytest.approx(want["vgg22"], rel=1e-4)
        assert float(got["relu5_4"][0]) == pytest.approx(want["vgg54"], rel=1e-4)
    # padded into one 64x80 canvas with garbage outside: the masks make it exact
    canvas = np.random.default_rng(4).uniform(0, 1, (2, 2, 64, 80, 3)).astype(np.float32)
    valid = np.array([hr.shape[:2] for hr in hrs], np.int32)
    for k, (sr, hr) in enumerate(zip(srs, hrs, strict=True)):
        h, w = hr.shape[:2]
        canvas[0, k, :h, :w], canvas[1, k, :h, :w] = sr / 255.0, hr / 255.0
    got = jax.jit(lambda p, s, r, v: metrics.all_metrics(s, r, SCALE, v, (module, p)))(variables, *canvas, valid)
    for k, (sr, hr, want) in enumerate(zip(srs, hrs, wants, strict=True)):
        assert float(got["vgg22"][k]) == pytest.approx(want["vgg22"], rel=1e-4)
        assert float(got["vgg54"][k]) == pytest.approx(want["vgg54"], rel=1e-4)
        pixel_mse = np.mean((sr / 255.0 - hr / 255.0) ** 2)
        for name in ("vgg22", "vgg54"):
            assert float(got[f"study_{name}"][k]) == pytest.approx(pixel_mse + 0.006 * want[name], rel=1e-4)
