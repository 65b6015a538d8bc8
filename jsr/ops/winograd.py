"""3x3 stride-1 convolutions by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, 2015): forward, input
gradient and kernel gradient, for CPU training and inference (``jsr.ops.conv.fast_conv(winograd_3x3=True)``).

XLA's CPU convolution already runs near the CPU's FMA peak, so only fewer multiplications can make it faster.
F(4x4, 3x3) computes each 4x4 output tile from a 6x6 input tile with 36 products per channel pair instead of 144:
the transformed input (36 x tiles x Cin) times the transformed kernel (36 x Cin x Cout) is ONE batched matmul,
with cheap elementwise transforms on either side. The kernel gradient is the same in reverse: transformed inputs
times transformed output gradients (A dy A^T per tile), summed over tiles, mapped back by G^T . G.

What makes it pay in plain JAX (each choice measured against its alternative: benchmarks/winograd.py,
benchmarks/conv_grad.py; figures in benchmarks/results and the README):
- the image is processed a band of tile rows at a time (``lax.map``) so that each band's transformed data stays in
  the CPU's caches; whole-image transforms made the 64 -> 256 convs no faster than XLA's;
- the transforms are separable 1-D passes (along W, then H), each a weighted sum of six strided views that XLA
  fuses into one loop, channels innermost; an optimisation barrier keeps the first pass from being recomputed;
- the 36 products are one ``dot_general`` with the 36-axis leading both operands (no transposes).
Error: ~1e-5 of the output's scale per conv (XLA's own float32 conv: ~1e-6), not growing along a chain of convs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

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
# transformed outputs per band (~9.4 MB in float32): 4x the size that was fastest under glibc's default malloc; with
# freed memory reused (jsr.host_memory) larger bands and fewer loop steps won (README, Performance)
BAND_FLOATS = 36 * 65536
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
    made of; ``jsr.ops.conv`` gives it Winograd gradients)."""
    n, h, w, cin = x.shape
    if kernel.shape[:3] != (3, 3, cin):
        raise ValueError(f"winograd_conv3x3 needs a (3, 3, {cin}, Cout) kernel for this input, got {kernel.shape}")
    cout = kernel.shape[3]
    padded, rows, bands, tile_cols = _padded_bands(x, cout)
    u = kernel_transform(kernel)

    def band(index):
        v = _band_input_transform(padded, index, rows, tile_cols)
        m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))), precision=precision)  # 36 matmuls in one
        return _output_transform(m, n, rows, tile_cols)

    out = lax.map(band, jnp.arange(bands))  # (bands, N, 4 rows, 4 cols, Cout)
    out = jnp.moveaxis(out, 0, 1).reshape(n, bands * TILE * rows, TILE * tile_cols, cout)
    return out[:, :h, :w]


def _output_transform_adjoint(dy: jnp.ndarray, rows: int, cols: int) -> jnp.ndarray:
    """The transpose of ``_output_transform``: (G, 4 rows, 4 cols, C) output gradients -> (36, G * rows * cols, C),
    A dy A^T of every 4x4 tile."""
    span = TILE * (cols - 1) + 1
    views = [dy[:, :, b : b + span : TILE] for b in range(TILE)]  # (G, 4 rows, cols, C) each
    along_w = jnp.stack([_weighted_sum(A_T[:, j], views) for j in range(N_IN)])
    along_w = lax.optimization_barrier(along_w)  # (6 j, G, 4 rows, cols, C)
    span = TILE * (rows - 1) + 1
    views = [along_w[:, :, a : a + span : TILE] for a in range(TILE)]  # (6 j, G, rows, cols, C) each
    m = jnp.stack([_weighted_sum(A_T[:, i], views) for i in range(N_IN)])  # (6 i, 6 j, G, rows, cols, C)
    return m.reshape(N_IN * N_IN, -1, dy.shape[-1])


def _kernel_transform_adjoint(du: jnp.ndarray) -> jnp.ndarray:
    """The transpose of ``kernel_transform``: (36, Cin, Cout) -> HWIO (3, 3, Cin, Cout), G^T du G."""
    du = du.reshape(N_IN, N_IN, *du.shape[1:])
    rows = [_weighted_sum(G[:, r], [du[i] for i in range(N_IN)]) for r in range(3)]  # (6 j, Cin, Cout) each
    return jnp.stack(
        [jnp.stack([_weighted_sum(G[:, s], [row[j] for j in range(N_IN)]) for s in range(3)]) for row in rows]
    )


def _padded_bands(x: jnp.ndarray, cout: int):
    """``x`` zero-padded for ``band_plan``'s bands (one 'SAME' pixel before; after: that plus the last tile and band),
    with (tile rows per band, bands, tile columns)."""
    n, h, w, _ = x.shape
    tile_rows, tile_cols = math.ceil(h / TILE), math.ceil(w / TILE)
    rows, bands = band_plan(max(1, n), tile_rows, tile_cols, cout)
    padded = lax.pad(
        x,
        jnp.zeros((), x.dtype),
        ((0, 0, 0), (1, TILE * rows * bands - h + 1, 0), (1, TILE * tile_cols - w + 1, 0), (0, 0, 0)),
    )
    return padded, rows, bands, tile_cols


def _band_input_transform(padded: jnp.ndarray, index, rows: int, cols: int) -> jnp.ndarray:
    """``_input_transform`` of band ``index`` of ``_padded_bands``' output (its rows plus the 2-pixel halo)."""
    piece = lax.dynamic_slice_in_dim(padded, index * TILE * rows, TILE * rows + 2, axis=1)
    return _input_transform(piece, rows, cols)


def winograd_weight_grad3x3(x: jnp.ndarray, dy: jnp.ndarray, precision=None) -> jnp.ndarray:
    """The kernel gradient of ``winograd_conv3x3(x, kernel)`` for the output gradient ``dy``, computed in the
    Winograd domain: per band, the transformed inputs (36, tiles, Cin) times the transformed output gradients (36,
    tiles, Cout), summed over tiles (36 matmuls in one), then mapped back by the kernel transform's transpose."""
    n, h, w, cin = x.shape
    cout = dy.shape[-1]
    padded, rows, bands, tile_cols = _padded_bands(x, cout)
    dy = lax.pad(
        dy,
        jnp.zeros((), dy.dtype),
        ((0, 0, 0), (0, TILE * rows * bands - h, 0), (0, TILE * tile_cols - w, 0), (0, 0, 0)),
    )

    def band(index):
        v = _band_input_transform(padded, index, rows, tile_cols)
        m = _output_transform_adjoint(
            lax.dynamic_slice_in_dim(dy, index * TILE * rows, TILE * rows, axis=1), rows, tile_cols
        )
        return lax.dot_general(
            v, m, (((1,), (1,)), ((0,), (0,))), precision=precision, preferred_element_type=jnp.float32
        )  # (36, Cin, Cout)

    du = lax.fori_loop(0, bands, lambda i, total: total + band(i), jnp.zeros((N_IN * N_IN, cin, cout), jnp.float32))
    return _kernel_transform_adjoint(du).astype(x.dtype)


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


# Jitted, so that the many same-shaped convs of a network are traced once (2.0 -> 0.3 s to lower SRResNet).
conv3x3 = jax.jit(winograd_conv3x3, static_argnames=("precision",))
weight_grad3x3 = jax.jit(winograd_weight_grad3x3, static_argnames=("precision",))
