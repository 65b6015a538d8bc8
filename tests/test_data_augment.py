"""On-device augmentation: exact identity and flips, rot90, per-example magnitudes, relative geometry, one compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jsr.data import augment as A

# Jitted once per shape: eager op-by-op dispatch would make these tests several times slower.
run = jax.jit(A.augment_batch, static_argnames=("scale", "mode"))
apply_draw = jax.jit(A.apply_draw)


def images(batch, h, w, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random((batch, h, w, 3)), jnp.float32)


@pytest.mark.parametrize("mode", ["derive", "paired"])
def test_zero_magnitudes_are_exact_identity(mode):
    hr, lr = images(3, 32, 48), images(3, 8, 12, seed=1)
    out_hr, out_lr = run(jax.random.key(7), hr, lr, A.zero_params(3), scale=4, mode=mode)
    np.testing.assert_array_equal(np.asarray(out_hr), np.asarray(hr))
    if mode == "paired":
        np.testing.assert_array_equal(np.asarray(out_lr), np.asarray(lr))
    assert out_lr.shape == (3, 8, 12, 3)


def test_rotation_by_90_degrees_matches_rot90_away_from_border():
    image = images(1, 20, 20)[0]
    draw = A.identity_draw() | {"angle_deg": jnp.float32(90.0)}
    out = np.asarray(apply_draw(image, draw))
    expected = np.rot90(np.asarray(image))  # counter-clockwise, like torchvision's positive angles
    np.testing.assert_allclose(out[1:-1, 1:-1], expected[1:-1, 1:-1], atol=1e-4)


@pytest.mark.parametrize(
    ("name", "expect"),
    [
        ("hflip_prob", lambda x: x[:, :, ::-1]),
        ("vflip_prob", lambda x: x[:, ::-1]),
        ("transpose_prob", lambda x: np.swapaxes(x, 1, 2)),
    ],
)
def test_flips_and_transpose_are_exact_in_both_images(name, expect):
    hr, lr = images(2, 16, 16), images(2, 4, 4, seed=3)
    params = A.make_params(2, **{name: 1.0})
    out_hr, out_lr = run(jax.random.key(0), hr, lr, params, scale=4, mode="paired")
    np.testing.assert_array_equal(np.asarray(out_hr), expect(np.asarray(hr)))
    np.testing.assert_array_equal(np.asarray(out_lr), expect(np.asarray(lr)))


def test_grayscale_uses_the_luma_weights():
    hr = images(1, 8, 8)
    out, _ = run(jax.random.key(0), hr, None, A.make_params(1, grayscale_prob=1.0), scale=4)
    r, g, b = (np.asarray(hr)[..., c] for c in range(3))
    gray = 0.2989 * r + 0.587 * g + 0.114 * b
    for c in range(3):
        np.testing.assert_allclose(np.asarray(out)[..., c], gray, rtol=1e-6)


def test_translation_is_relative_to_each_image_and_fills_the_uncovered_part():
    hr, lr = images(1, 32, 32), images(1, 8, 8, seed=2)
    draw = A.identity_draw() | {"translate": jnp.array([0.25, 0.0], jnp.float32)}
    fill = jnp.array([1.0, 0.5, 0.0])
    out_hr = np.asarray(apply_draw(hr[0], draw, fill))
    out_lr = np.asarray(apply_draw(lr[0], draw, fill))
    np.testing.assert_allclose(out_hr[:, 8:], np.asarray(hr)[0, :, :-8], atol=1e-6)  # 0.25 * 32 pixels right
    np.testing.assert_allclose(out_lr[:, 2:], np.asarray(lr)[0, :, :-2], atol=1e-6)  # 0.25 * 8 pixels right
    np.testing.assert_allclose(out_hr[:, :8], np.broadcast_to(fill, (32, 8, 3)), atol=1e-6)


def test_perspective_homography_maps_the_moved_corners_back():
    src = jnp.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    dst = jnp.array([[-0.7, -0.9], [0.8, -0.6], [0.9, 0.95], [-0.6, 0.7]])
    h = np.asarray(A.homography_from_points(src, dst), np.float64)
    pts = np.concatenate([np.asarray(src), np.ones((4, 1))], axis=1) @ h.T
    np.testing.assert_allclose(pts[:, :2] / pts[:, 2:], np.asarray(dst), atol=1e-5)


def test_full_perspective_leaves_fill_in_the_corners():
    hr = images(1, 32, 32)
    params = A.make_params(1, perspective_distortion=1.0, perspective_prob=1.0)
    out, _ = run(jax.random.key(3), hr, None, params, scale=4, fill=0.25)
    assert not np.array_equal(np.asarray(out), np.asarray(hr))
    corners = np.asarray(out)[0, [0, 0, -1, -1], [0, -1, 0, -1]]
    # Corners move inward by U(0, 1) * half the side: a corner pixel is fill unless its draw was tiny.
    assert (np.abs(corners - 0.25) < 1e-6).all(axis=-1).sum() >= 2


def test_per_example_magnitudes_give_per_example_results():
    one = images(1, 24, 24)
    hr = jnp.repeat(one, 4, axis=0)
    params = A.make_params(4)
    params["rotation_deg"] = jnp.array([0.0, 45.0, 0.0, 45.0])
    params["hflip_prob"] = jnp.array([0.0, 0.0, 1.0, 0.0])
    out, _ = run(jax.random.key(5), hr, None, params, scale=4)
    out = np.asarray(out)
    np.testing.assert_array_equal(out[0], np.asarray(one[0]))
    np.testing.assert_array_equal(out[2], np.asarray(one[0])[:, ::-1])
    assert not np.allclose(out[1], out[0], atol=1e-3)
    assert not np.allclose(out[1], out[3], atol=1e-3)  # same magnitude, independent draws


def test_derived_lr_is_close_to_pillow_bicubic_of_the_warped_hr():
    hr = jnp.asarray(np.rint(np.asarray(images(1, 64, 64)) * 255) / 255.0, jnp.float32)  # exactly 8-bit values
    out_hr, out_lr = run(jax.random.key(0), hr, None, A.zero_params(1), scale=4)
    pil = np.asarray(Image.fromarray(np.uint8(np.rint(np.asarray(out_hr[0]) * 255))).resize((16, 16), Image.BICUBIC))
    diff = np.abs(np.asarray(out_lr[0]) * 255 - pil)[2:-2, 2:-2]
    assert out_lr.shape == (1, 16, 16, 3)
    assert diff.max() <= 2.0, diff.max()


def test_jitted_without_recompiles_across_batches():
    traces = []

    @jax.jit
    def step(key, hr, lr, params):
        traces.append(1)
        return A.augment_batch(key, hr, lr, params, scale=4, mode="derive")

    params = A.make_params(4, **A.STUDY_RECIPE)
    for i in range(3):
        params = jax.tree.map(lambda p, i=i: p * (0.5 + 0.1 * i), params)
        hr, lr = step(jax.random.key(i), images(4, 32, 32, seed=i), images(4, 8, 8, seed=i), params)
        assert hr.shape == (4, 32, 32, 3) and lr.shape == (4, 8, 8, 3)
        assert 0.0 <= float(hr.min()) and float(hr.max()) <= 1.0
    assert len(traces) == 1


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="rotation"):
        A.make_params(2, rotation=3.0)
    params = A.zero_params(2)
    params["scale"] = jnp.zeros(3)
    with pytest.raises(ValueError, match="'scale'"):
        A.augment_batch(jax.random.key(0), images(2, 8, 8), None, params)
    with pytest.raises(ValueError, match="mode"):
        A.augment_batch(jax.random.key(0), images(2, 8, 8), None, A.zero_params(2), mode="bogus")
