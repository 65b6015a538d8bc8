"""3x3 stride-1 convolutions by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, 2015): for CPU inference.

XLA's CPU convolution already runs near the CPU's FMA peak (benchmarks/winograd.py), so only fewer
multiplications can make SRResNet's inference faster. F(4x4, 3x3) computes each 4x4 output tile from a 6x6 input
tile with 36 products per channel pair instead of 144: the transformed input (36 x tiles x Cin) times the
transformed kernel (36 x Cin x Cout) is ONE batched matmul, with cheap elementwise transforms on either side.

What makes it pay in plain JAX (each choice measured against its alternative):
- the image is processed a band of tile rows at a time (``lax.map``) so that each band's transformed data stays in
  cache (~2.4 MB); whole-image transforms made the 64 -> 256 convs no faster than XLA's;
- the transforms are separable 1-D passes (along W, then H), each a weighted sum of six strided views that XLA
  fuses into one loop, channels innermost; an optimisation barrier keeps the first pass from being recomputed;
- the 36 products are one ``dot_general`` with the 36-axis leading both operands (no transposes).
Measured per conv (batch 1, float32, median of interleaved pairs): 64 -> 64 at 128x128 0.59-0.67x XLA's time,
64 -> 256 at 128x128 0.45-0.52x, at 256x256 0.50-0.57x. Error: ~1e-5 of the output's scale per conv (XLA's own
float32 conv: ~1e-6), not growing along a chain of 32 convs (3.4e-6).
"""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jsr.ops.layout import explicit_padding, plain_conv

TILE = 4  # output tile side m of F(m x m, 3 x 3)
# Interpolation points 0, 1, -1, 2, -2, infinity (the well-conditioned choice for F(4, 3)).
B_T = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    np.float64,
)
G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    np.float64,
)
A_T = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)
N_IN = B_T.shape[0]  # 6: input tile side
BAND_FLOATS = 36 * 16384  # transformed outputs per band (~2.4 MB in float32): what stayed in cache best
MIN_SIDE = 12  # smaller maps keep XLA's conv (the fastest VGG19 threshold in benchmarks/winograd.py)
MIN_CHANNELS = 16  # fewer input or output channels keep XLA's conv (faster there: the 64 -> 3 output conv)


def _weighted_sum(coefficients, terms):
    """sum_k c_k * t_k, skipping zeros and multiplications by +-1."""
    total = None
    for c, t in zip(coefficients, terms, strict=True):
        if c == 0:
            continue
        term = t if c == 1 else -t if c == -1 else t * np.float32(c)
        total = term if total is None else total + term
    return total


def kernel_transform(kernel: jnp.ndarray) -> jnp.ndarray:
    """HWIO (3, 3, Cin, Cout) -> (36, Cin, Cout): G g G^T for every channel pair."""
    # separable weighted sums of the nine (Cin, Cout) taps: an einsum here cost 3 ms per 64x64 conv inside the jit
    rows = [_weighted_sum(G[i], [kernel[k] for k in range(3)]) for i in range(N_IN)]  # (3, Cin, Cout) each
    return jnp.stack([_weighted_sum(G[j], [r[tap] for tap in range(3)]) for r in rows for j in range(N_IN)])


def _input_transform(band: jnp.ndarray, rows: int, cols: int) -> jnp.ndarray:
    """Zero-padded bands (G, 4 rows + 2, 4 cols + 2, C) -> (36, G * rows * cols, C): B^T d B of every 6x6 tile."""
    span = TILE * (cols - 1) + 1
    views = [band[:, :, k : k + span : TILE] for k in range(N_IN)]  # (G, 4 rows + 2, cols, C) each
    along_w = jnp.stack([_weighted_sum(B_T[j], views) for j in range(N_IN)])
    along_w = lax.optimization_barrier(along_w)  # materialised once, not recomputed for each H term
    span = TILE * (rows - 1) + 1
    views = [along_w[:, :, k : k + span : TILE] for k in range(N_IN)]  # (6, G, rows, cols, C) each
    v = jnp.stack([_weighted_sum(B_T[i], views) for i in range(N_IN)])  # (6 i, 6 j, G, rows, cols, C)
    return v.reshape(N_IN * N_IN, -1, band.shape[-1])


def _output_transform(m: jnp.ndarray, images: int, rows: int, cols: int) -> jnp.ndarray:
    """(36, G * rows * cols, Cout) -> the (G, 4 rows, 4 cols, Cout) outputs: A^T m A of every tile, untiled."""
    m = m.reshape(N_IN, N_IN, images, rows, cols, m.shape[-1])
    half = jnp.stack([_weighted_sum(A_T[a], [m[i] for i in range(N_IN)]) for a in range(TILE)])
    half = lax.optimization_barrier(half)  # (4 a, 6 j, G, rows, cols, Cout)
    y = jnp.stack([_weighted_sum(A_T[b], [half[:, j] for j in range(N_IN)]) for b in range(TILE)], axis=4)
    # (4 a, G, rows, cols, 4 b, C) -> (G, rows, 4 a, cols, 4 b, C) = image order
    return y.transpose(1, 2, 0, 3, 4, 5).reshape(images, TILE * rows, TILE * cols, m.shape[-1])


def band_plan(images: int, tile_rows: int, tile_cols: int, out_channels: int) -> tuple[int, int]:
    """(tile rows per band, bands): each band holds those rows of EVERY image, sized so that its transformed output
    (36 x tiles x Cout) is about ``BAND_FLOATS``; the bands split the rows evenly (little zero padding). Keeping
    the whole batch in every band leaves the batch axis alone, so a batch sharded over devices stays sharded."""
    target = max(1, BAND_FLOATS // (N_IN * N_IN * out_channels))  # tiles per band
    bands = math.ceil(tile_rows / max(1, target // (images * tile_cols)))
    return math.ceil(tile_rows / bands), bands


def winograd_conv3x3(x: jnp.ndarray, kernel: jnp.ndarray, precision=None) -> jnp.ndarray:
    """NHWC ``x`` convolved with the HWIO 3x3 ``kernel``, stride 1, zero padding 1 ('SAME'): (N, H, W, Cout).

    Any N, H, W (the last tiles and bands are zero-padded and cropped); differentiable (by JAX, as the ops it is
    made of)."""
    n, h, w, cin = x.shape
    if kernel.shape[:3] != (3, 3, cin):
        raise ValueError(f"winograd_conv3x3 needs a (3, 3, {cin}, Cout) kernel for this input, got {kernel.shape}")
    cout = kernel.shape[3]
    tile_rows, tile_cols = math.ceil(h / TILE), math.ceil(w / TILE)
    rows, bands = band_plan(max(1, n), tile_rows, tile_cols, cout)
    # one pixel of 'SAME' padding before; after: the same plus whatever completes the last tile and band
    padded = lax.pad(
        x,
        jnp.zeros((), x.dtype),
        ((0, 0, 0), (1, TILE * rows * bands - h + 1, 0), (1, TILE * tile_cols - w + 1, 0), (0, 0, 0)),
    )
    u = kernel_transform(kernel)

    def band(index):
        piece = lax.dynamic_slice_in_dim(padded, index * TILE * rows, TILE * rows + 2, axis=1)
        v = _input_transform(piece, rows, tile_cols)
        m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))), precision=precision)  # 36 matmuls in one
        return _output_transform(m, n, rows, tile_cols)

    out = lax.map(band, jnp.arange(bands))  # (bands, N, 4 rows, 4 cols, Cout)
    out = jnp.moveaxis(out, 0, 1).reshape(n, bands * TILE * rows, TILE * tile_cols, cout)
    return out[:, :h, :w]


def applies(lhs, rhs, strides, padding) -> bool:
    """Whether ``winograd_conv3x3`` serves this NHWC / HWIO convolution (explicit ``padding`` pairs) and pays: 3x3,
    stride 1, 'SAME', float32, maps of at least ``MIN_SIDE`` pixels, at least ``MIN_CHANNELS`` in and out."""
    return (
        tuple(jnp.shape(rhs)[:2]) == (3, 3)
        and jnp.shape(lhs)[0] > 0
        and tuple(strides) == (1, 1)
        and tuple(padding) == ((1, 1), (1, 1))
        and jnp.result_type(lhs) == jnp.result_type(rhs) == jnp.float32
        and min(jnp.shape(lhs)[1:3]) >= MIN_SIDE
        and min(jnp.shape(rhs)[2:]) >= MIN_CHANNELS
    )


_CONV_SIGNATURE = inspect.signature(lax.conv_general_dilated)


def winograd_conv(*args, **kwargs):
    """``lax.conv_general_dilated`` (same signature) that runs the convolutions ``applies`` accepts by
    ``winograd_conv3x3``; every other call is passed to ``lax.conv_general_dilated`` unchanged. Plugs into Flax as
    ``nn.Conv(..., conv_general_dilated=winograd_conv)``."""
    call = _CONV_SIGNATURE.bind(*args, **kwargs)
    call.apply_defaults()
    a = call.arguments
    lhs, rhs, strides = a["lhs"], a["rhs"], a["window_strides"]
    plain = plain_conv(
        lhs,
        *(a[k] for k in ("dimension_numbers", "lhs_dilation", "rhs_dilation", "feature_group_count")),
        *(a[k] for k in ("batch_group_count", "preferred_element_type")),
    )
    if plain and applies(lhs, rhs, strides, explicit_padding(a["padding"], jnp.shape(lhs), jnp.shape(rhs), strides)):
        return _winograd_conv3x3_jit(lhs, rhs, precision=a["precision"])
    return lax.conv_general_dilated(*args, **kwargs)


# Jitted, so that the many same-shaped convs of a network are traced once (2.0 -> 0.3 s to lower SRResNet).
_winograd_conv3x3_jit = jax.jit(winograd_conv3x3, static_argnames=("precision",))
