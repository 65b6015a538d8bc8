"""A drop-in ``lax.conv_general_dilated`` whose weight gradient uses a chosen formulation.

``fast_conv`` has ``lax.conv_general_dilated``'s signature, so it plugs into Flax as
``nn.Conv(..., conv_general_dilated=fast_conv)`` with the module, its parameters and their layout unchanged. Its
forward pass is XLA's own, and so is the input gradient of stride-1 convs (strided ones: ``input_grad_phases``,
one stride-1 conv per output phase; a frozen kernel's 3x3 'SAME' forward and input gradient on a CPU, and with
``winograd_3x3`` a trained one's forward and both gradients: Winograd F(4x4, 3x3), ``jsr.ops.winograd``, equal to
~1e-5); the kernel (weight) gradient is otherwise computed by one of ``WEIGHT_GRADS``
(``benchmarks/conv_grad.py`` measures them against XLA's weight-gradient convolution):

- ``xla``: XLA's own (the transpose of the convolution; reference).
- ``taps``: one matmul per kernel tap, ``dW[i, j] = x_shifted(i, j)^T dy`` contracted over batch and space.
- ``im2col``: the shifted slices concatenated on the channel axis, then ONE matmul ``patches^T dy``.
- ``rows``: per kernel row, the width taps concatenated (kh matmuls of kw*Cin rows).
- ``tiles`` / ``chunks``: XLA's own on output tiles / batch chunks small enough for its fast regime.
- ``out_patches``: the shifted copies of the OUTPUT gradient, one matmul with ``x`` (few output channels).
- ``auto``: the measured choice among these per shape (the default).

Only 2-D NHWC / HWIO convolutions without dilation and without feature/batch groups take the custom path; every
other call is passed to ``lax.conv_general_dilated`` unchanged. Convolutions with at most ``SMALL_CONV_PIXELS``
output pixels per image are instead im2col + one matmul, differentiated by JAX as usual (XLA's CPU convolution
runs those as a naive loop). The custom path is a ``jax.custom_vjp``: it is reverse-differentiable (``jax.grad``,
``jax.vjp``) but NOT forward-differentiable (``jax.jvp`` raises), so models that are linearised in forward mode
(Delta-STN's response) must use the plain path.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jsr.ops import winograd
from jsr.ops.layout import NHWC, explicit_padding, plain_conv

# ------------------------------------------------------------------------------------------------ weight gradients


def _pad_hw(x, padding):
    """Zero-pad (or, for negative amounts, crop) the two spatial axes of NHWC ``x``, as the convolution does."""
    (pt, pb), (pl, pr) = padding
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))


def _shifted(xpad, i: int, j: int, out_hw: tuple[int, int], strides: tuple[int, int]):
    """xpad[:, i + s*h, j + s*w, :] for h < Ho, w < Wo: the input pixels that kernel tap (i, j) multiplies."""
    (ho, wo), (sh, sw) = out_hw, strides
    n, _, _, c = xpad.shape
    return lax.slice(xpad, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1))


def _im2col(x, kernel_hw: tuple[int, int], out_hw: tuple[int, int], strides, padding):
    """The kh*kw shifted input slices of the padded ``x`` concatenated on channels: (N, Ho, Wo, kh*kw*Cin)."""
    xpad = _pad_hw(x, padding)
    kh, kw = kernel_hw
    return jnp.concatenate([_shifted(xpad, i, j, out_hw, strides) for i in range(kh) for j in range(kw)], axis=-1)


def _contract(a, dy, precision, out_dtype):
    """sum over (n, h, w) of a[n, h, w, k] dy[n, h, w, o] -> (k, o)."""
    out = lax.dot_general(
        a, dy, (((0, 1, 2), (0, 1, 2)), ((), ())), precision=precision, preferred_element_type=jnp.float32
    )
    return out.astype(out_dtype)


def weight_grad_xla(x, dy, kernel_shape, strides, padding, precision=None):
    """XLA's weight gradient: the VJP of ``lax.conv_general_dilated`` with respect to the kernel (the reference)."""
    kernel = jnp.zeros(kernel_shape, x.dtype)
    _, vjp = jax.vjp(
        lambda k: lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC, precision=precision),
        kernel,
    )
    return vjp(dy)[0]


def weight_grad_taps(x, dy, kernel_shape, strides, padding, precision=None):
    kh, kw, _, _ = kernel_shape
    xpad = _pad_hw(x, padding)
    out_hw = dy.shape[1:3]
    taps = [
        _contract(_shifted(xpad, i, j, out_hw, strides), dy, precision, x.dtype) for i in range(kh) for j in range(kw)
    ]
    return jnp.stack(taps).reshape(kernel_shape)


def weight_grad_im2col(x, dy, kernel_shape, strides, padding, precision=None):
    patches = _im2col(x, kernel_shape[:2], dy.shape[1:3], strides, padding)
    return _contract(patches, dy, precision, x.dtype).reshape(kernel_shape)


def weight_grad_rows(x, dy, kernel_shape, strides, padding, precision=None):
    kh, kw, _, _ = kernel_shape
    xpad = _pad_hw(x, padding)
    out_hw = dy.shape[1:3]
    rows = []
    for i in range(kh):
        patches = jnp.concatenate([_shifted(xpad, i, j, out_hw, strides) for j in range(kw)], axis=-1)
        rows.append(_contract(patches, dy, precision, x.dtype))
    return jnp.stack(rows).reshape(kernel_shape)


def _tile_side(size: int, target: int) -> int:
    """The largest divisor of ``size`` that is <= ``target`` (``size`` itself when that is small)."""
    if size <= target:
        return size
    return max(d for d in range(1, target + 1) if size % d == 0)


def _fold_tiles(x, dy, kernel_shape, strides, padding, tile: int):
    """Output tiles of at most ``tile`` x ``tile`` (each with the input window it reads, halo included) folded into
    the batch axis: ``(x_tiles, dy_tiles, padding)`` give the same weight gradient as ``(x, dy, padding)``."""
    kh, kw, _, _ = kernel_shape
    (sh, sw), (ho, wo) = strides, dy.shape[1:3]
    th, tw = _tile_side(ho, tile), _tile_side(wo, tile)
    if (th, tw) == (ho, wo):
        return x, dy, padding
    xpad = _pad_hw(x, padding)
    n, _, _, c = xpad.shape
    in_h, in_w = (th - 1) * sh + kh, (tw - 1) * sw + kw
    xs, dys = [], []
    for a in range(ho // th):
        for b in range(wo // tw):
            y0, x0 = a * th * sh, b * tw * sw
            xs.append(lax.slice(xpad, (0, y0, x0, 0), (n, y0 + in_h, x0 + in_w, c)))
            dys.append(dy[:, a * th : (a + 1) * th, b * tw : (b + 1) * tw])
    return jnp.concatenate(xs), jnp.concatenate(dys), ((0, 0), (0, 0))


def weight_grad_tiles(x, dy, kernel_shape, strides, padding, precision=None, tile: int = 24):
    """XLA's weight gradient on output tiles folded into the batch (see ``_fold_tiles``)."""
    x, dy, padding = _fold_tiles(x, dy, kernel_shape, strides, padding, tile)
    return weight_grad_xla(x, dy, kernel_shape, strides, padding, precision)


def weight_grad_chunks(x, dy, kernel_shape, strides, padding, precision=None, pixels: int = 9216, tile: int = 96):
    """XLA's weight gradient summed over batch chunks of at most ``pixels`` output pixels each.

    XLA's CPU weight-gradient convolution contracts over batch x output pixels; past ~10k of them it falls far
    below the machine's matmul speed (benchmarks/conv_grad.py), so the sum is
    split into chunks that stay in the fast regime. Images larger than ``tile`` are first cut into tiles.
    """
    x, dy, padding = _fold_tiles(x, dy, kernel_shape, strides, padding, tile)
    n, ho, wo, _ = dy.shape
    per = max(1, pixels // (ho * wo))
    total = None
    for i in range(0, n, per):
        part = weight_grad_xla(x[i : i + per], dy[i : i + per], kernel_shape, strides, padding, precision)
        part = part.astype(jnp.float32)
        total = part if total is None else total + part
    return total.astype(x.dtype)


def weight_grad_out_patches(x, dy, kernel_shape, strides, padding, precision=None):
    """For few output channels (the generator's 64 -> 3 last conv): the patches of ``dy``, not of ``x``.

    ``dW[i, j, c, o] = sum_q x[q, c] dy[q + pad - (i, j), o]``: the kh*kw shifted copies of ``dy`` (kh*kw*Cout
    channels, small when Cout is) are stacked and contracted with ``x`` in ONE matmul over all pixels, reading the
    large ``x`` once and never transposing it. Stride 1 only (other strides go to XLA's).
    """
    if tuple(strides) != (1, 1):
        return weight_grad_xla(x, dy, kernel_shape, strides, padding, precision)
    kh, kw, cin, cout = kernel_shape
    (pt, pb), (pl, pr) = padding
    n, h, w, _ = x.shape
    # dy placed so that the slice starting at (kh-1-i, kw-1-j) reads dy[a + pt - i, b + pl - j] for input pixel
    # (a, b), zero where that is off dy (negative pads crop, when the conv's padding exceeds kernel - 1)
    dy_pad = lax.pad(
        dy,
        jnp.zeros((), dy.dtype),
        ((0, 0, 0), (kh - 1 - pt, kh - 1 - pb, 0), (kw - 1 - pl, kw - 1 - pr, 0), (0, 0, 0)),
    )
    taps = [dy_pad[:, kh - 1 - i : kh - 1 - i + h, kw - 1 - j : kw - 1 - j + w] for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(taps, axis=-1).reshape(n * h * w, kh * kw * cout)
    # (kh*kw*Cout, Cin): the small operand first measured 1.5x faster than x^T @ patches on XLA CPU
    out = lax.dot_general(
        patches,
        x.reshape(n * h * w, cin),
        (((0,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=jnp.float32,
    )
    return out.reshape(kh, kw, cout, cin).transpose(0, 1, 3, 2).astype(x.dtype)


def weight_grad_auto(x, dy, kernel_shape, strides, padding, precision=None):
    """The measured choice (benchmarks/conv_grad.py, jax CPU): the patches of ``dy`` for stride-1 convs with
    at most 8 output and at least 16 input channels (the 3-channel last conv); per kernel row for at most 4 input
    channels, kernels up to 3x3, over more than 9216 batch x output pixels (the discriminator's RGB conv at 96x96;
    SRResNet's 9x9 RGB conv at 24x24 stays with XLA's, faster there); batch chunks of 2304 output pixels where XLA's
    weight gradient leaves its fast regime (more than 9216 batch x output
    pixels, >= 16 channels in and out); XLA's own elsewhere (as fast or faster there)."""
    n, ho, wo, cout = dy.shape
    if tuple(strides) == (1, 1) and cout <= 8 and x.shape[-1] >= 16:
        return weight_grad_out_patches(x, dy, kernel_shape, strides, padding, precision)
    if x.shape[-1] <= 4 and kernel_shape[0] * kernel_shape[1] <= 9 and n * ho * wo > 9216:
        return weight_grad_rows(x, dy, kernel_shape, strides, padding, precision)
    if n * ho * wo > 9216 and min(x.shape[-1], cout) >= 16:
        return weight_grad_chunks(x, dy, kernel_shape, strides, padding, precision, pixels=2304)
    return weight_grad_xla(x, dy, kernel_shape, strides, padding, precision)


WEIGHT_GRADS = {
    "xla": weight_grad_xla,
    "taps": weight_grad_taps,
    "im2col": weight_grad_im2col,
    "rows": weight_grad_rows,
    "tiles": weight_grad_tiles,
    "chunks": weight_grad_chunks,
    "chunks4k": functools.partial(weight_grad_chunks, pixels=4608),
    "chunks2k": functools.partial(weight_grad_chunks, pixels=2304),
    "out_patches": weight_grad_out_patches,
    "auto": weight_grad_auto,
}
# The formulation ``fast_conv`` uses (chosen by benchmarks/conv_grad.py's figures on the target CPU).
DEFAULT_WEIGHT_GRAD = "auto"


# ------------------------------------------------------------------------------------------------ input gradient


def _phase_taps(kernel: int, stride: int, pad_lo: int, phase: int) -> tuple[list[int], int]:
    """1-D: the input positions ``m = stride * q + phase`` receive ``sum_u dy[q + offset + u] * k[taps[u]]``."""
    first = (phase + pad_lo) % stride
    taps = list(range(first, kernel, stride))[::-1]
    return taps, (phase + pad_lo - first) // stride - (len(taps) - 1)


def input_grad_phases(dy, kernel, x_shape, strides, padding, precision=None):
    """The input gradient of a strided convolution as stride-1 convolutions, one per output phase.

    XLA's own dilates ``dy`` by the stride (zeros between pixels) and convolves with the whole kernel, which XLA
    CPU runs outside its fast convolution path (the discriminator's stride-2 convs: several times their forward). Input
    pixels of phase ``(a, b)`` (row % stride, col % stride) only meet the kernel taps of that
    phase, so each phase is a small dense stride-1 convolution of ``dy`` (together exactly the forward's FLOPs);
    the phases are then interleaved.
    """
    n, h, w, cin = x_shape
    kh, kw, _, _ = kernel.shape
    (sh, sw), ((ph, _), (pw, _)) = strides, padding
    ho, wo = dy.shape[1:3]
    qh, qw = -(-h // sh), -(-w // sw)  # every phase computed at the largest phase size, cropped at the end
    rows = []
    for a in range(sh):
        cols = []
        for b in range(sw):
            taps_h, off_h = _phase_taps(kh, sh, ph, a)
            taps_w, off_w = _phase_taps(kw, sw, pw, b)
            if not taps_h or not taps_w:  # a kernel smaller than its stride never reaches this phase
                cols.append(jnp.zeros((n, qh, qw, cin), dy.dtype))
                continue
            sub = kernel[jnp.asarray(taps_h)][:, jnp.asarray(taps_w)]
            pads = ((-off_h, qh + len(taps_h) - 1 - ho + off_h), (-off_w, qw + len(taps_w) - 1 - wo + off_w))
            cols.append(
                lax.conv_general_dilated(
                    dy, sub, (1, 1), pads, dimension_numbers=("NHWC", "HWOI", "NHWC"), precision=precision
                )
            )
        rows.append(jnp.stack(cols, axis=3))  # (n, qh, qw, sw, cin)
    return jnp.stack(rows, axis=2).reshape(n, qh * sh, qw * sw, cin)[:, :h, :w]


# ------------------------------------------------------------------------------------------------ the custom VJP


@functools.cache
def _custom_conv(
    strides: tuple[int, int],
    padding: tuple[tuple[int, int], ...],
    precision,
    weight_grad: str,
    by_winograd: bool,
    flipped_input_grad: bool = False,
):
    """``conv(x, k, cache)``: the convolution with the chosen weight gradient. ``cache`` is ``()`` or, for a frozen
    kernel of a stride-1 conv, ``(input_grad_kernel(k),)``, which the input gradient then convolves with; with
    ``flipped_input_grad`` a trained stride-1 kernel's input gradient convolves with ``input_grad_kernel(k)`` too.
    ``by_winograd`` (3x3 'SAME' stride-1 convs only): by Winograd F(4x4, 3x3), ``jsr.ops.winograd``, the forward,
    the input gradient (the same kind of conv, with the flipped kernel) and, for a trained kernel (no cache), the
    kernel gradient (in the Winograd domain)."""
    wgrad = WEIGHT_GRADS[weight_grad]

    def plain(x, k):
        if by_winograd:
            return winograd.conv3x3(x, k, precision=precision)
        return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC, precision=precision)

    @jax.custom_vjp
    def conv(x, k, cache):
        return plain(x, k)

    def fwd(x, k, cache):
        return plain(x, k), (x, k, cache)

    def bwd(res, dy):
        x, k, cache = res
        dy = dy.astype(x.dtype)

        def flipped_kernel():  # built only by the branches that convolve with it
            return cache[0] if cache else input_grad_kernel(k)

        if by_winograd:
            dx = winograd.conv3x3(dy, flipped_kernel(), precision=precision)
        elif cache or (flipped_input_grad and strides == (1, 1)):
            (kh, kw), ((pt, pb), (pl, pr)) = k.shape[:2], padding
            flipped_pads = ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr))
            dx = lax.conv_general_dilated(
                dy, flipped_kernel(), (1, 1), flipped_pads, dimension_numbers=NHWC,
                precision=precision,
            )  # fmt: skip
        elif strides == (1, 1):
            _, vjp_x = jax.vjp(lambda x_: plain(x_, k), x)  # XLA's input gradient
            (dx,) = vjp_x(dy)
        else:
            dx = input_grad_phases(dy, k, x.shape, strides, padding, precision)
        # a frozen kernel's own gradient stays exact (XLA drops it when nobody uses it); the cache is a copy of
        # ``k``, so it passes no gradient of its own
        if by_winograd and not cache:  # a trained kernel
            dk = winograd.weight_grad3x3(x, dy, precision=precision)
        else:
            dk = wgrad(x, dy, k.shape, strides, padding, precision)
        return dx, dk.astype(k.dtype), tuple(jnp.zeros_like(c) for c in cache)

    conv.defvjp(fwd, bwd)
    return conv


# ------------------------------------------------------------------------------------------------ frozen kernels


def input_grad_kernel(kernel):
    """The kernel a stride-1 HWIO conv's input gradient convolves with: spatially flipped, in and out swapped.

    XLA builds it inside every backward pass (VGG19's transposes are a visible share of a perceptual-loss
    backward); for a frozen kernel it can be built once and passed to ``fast_conv``."""
    return jnp.swapaxes(lax.rev(kernel, (0, 1)), 2, 3)


# Output pixels per image at or below which ``fast_conv`` is im2col + one matmul (differentiated by JAX) instead of
# XLA's convolution: on CPU, XLA swaps the operands of a conv whose input is smaller than its kernel (VGG's 2x2 maps
# at 32x32 input) and runs the result as a naive loop; its input gradient at 4x4 is slow too.
SMALL_CONV_PIXELS = 16


def _out_hw(lhs_shape, rhs_shape, strides, pads) -> tuple[int, int]:
    (_, h, w, _), (kh, kw, _, _) = lhs_shape, rhs_shape
    return (h + sum(pads[0]) - kh) // strides[0] + 1, (w + sum(pads[1]) - kw) // strides[1] + 1


def _im2col_conv(x, k, out_hw, strides, pads, precision):
    """The convolution as ``_im2col`` patches times the reshaped kernel: one matmul."""
    kh, kw, cin, cout = k.shape
    patches = _im2col(x, (kh, kw), out_hw, strides, pads)
    return lax.dot_general(patches, k.reshape(kh * kw * cin, cout), (((3,), (0,)), ((), ())), precision=precision)


def fast_conv(
    lhs,
    rhs,
    window_strides: Sequence[int],
    padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    *,
    weight_grad: str = DEFAULT_WEIGHT_GRAD,
    input_grad_kernel=None,
    winograd_3x3: bool = False,
    flipped_input_grad: bool = False,
):
    """``lax.conv_general_dilated`` with the kernel gradient computed by ``WEIGHT_GRADS[weight_grad]`` (or, for at
    most ``SMALL_CONV_PIXELS`` output pixels, the whole convolution as im2col + one matmul).

    ``input_grad_kernel``: for a kernel that is not trained, ``input_grad_kernel(rhs)`` computed once; stride-1
    convs then read it for their input gradient instead of transposing ``rhs`` in every backward pass (equal
    values; the kernel's own gradient stays available and exact). It must be built from THIS ``rhs``: only its
    shape is checked, so a cache kept after the kernel changed gives a wrong input gradient.

    ``winograd_3x3``: the float32 3x3 'SAME' stride-1 convs that ``jsr.ops.winograd.applies`` accepts run forward,
    input gradient and kernel gradient by Winograd F(4x4, 3x3) (a quarter of the multiplications; equal to ~1e-5 of
    the output's scale); the others as without it.

    ``flipped_input_grad``: a trained stride-1 kernel's input gradient is a plain convolution with
    ``input_grad_kernel(rhs)`` rather than XLA's transposed form (which oneDNN runs 2-3x slower)."""
    plain_call = functools.partial(
        lax.conv_general_dilated,
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    plain = plain_conv(
        lhs, dimension_numbers, lhs_dilation, rhs_dilation, feature_group_count, batch_group_count,
        preferred_element_type,
    )  # fmt: skip
    if (weight_grad == "xla" and not flipped_input_grad) or not plain or jnp.result_type(lhs) != jnp.result_type(rhs):
        return plain_call()
    strides = tuple(int(s) for s in window_strides)
    pads = explicit_padding(padding, jnp.shape(lhs), jnp.shape(rhs), strides)
    out_hw = _out_hw(jnp.shape(lhs), jnp.shape(rhs), strides, pads)
    if 0 < out_hw[0] * out_hw[1] <= SMALL_CONV_PIXELS:
        return _im2col_conv(lhs, rhs, out_hw, strides, pads, precision)
    pays = winograd.applies(lhs, rhs, strides, pads)
    if input_grad_kernel is not None and strides == (1, 1):
        kh, kw, cin, cout = jnp.shape(rhs)
        if jnp.shape(input_grad_kernel) != (kh, kw, cout, cin):
            raise ValueError(
                f"input_grad_kernel has shape {jnp.shape(input_grad_kernel)}, expected {(kh, kw, cout, cin)}: "
                "pass input_grad_kernel(kernel) of this conv's own kernel"
            )
        cache = (jnp.asarray(input_grad_kernel).astype(jnp.result_type(rhs)),)
        # a frozen kernel (the perceptual loss's VGG19) by Winograd on a CPU, on the 'fast' path too
        frozen_winograd = jax.default_backend() == "cpu"
        return _custom_conv(strides, pads, precision, weight_grad, frozen_winograd and pays)(lhs, rhs, cache)
    by_winograd = winograd_3x3 and pays
    return _custom_conv(strides, pads, precision, weight_grad, by_winograd, flipped_input_grad)(lhs, rhs, ())


CONV_PATHS = ("xla", "fast", "winograd", "onednn")
FAST_PATHS = ("fast", "winograd", "onednn")  # built on fast_conv (frozen kernels' input_grad_kernel, fast pools)
CONFIG_CONV_CHOICES = ("auto", *CONV_PATHS)


def conv_function(path: str):
    """The ``conv_general_dilated`` to give ``nn.Conv`` for a model's ``conv`` switch: None (Flax's default,
    ``lax.conv_general_dilated``) for 'xla', ``fast_conv`` for 'fast', ``fast_conv`` with Winograd F(4x4, 3x3) for
    its 3x3 convs (forward and both gradients) for 'winograd', and for 'onednn' (XLA's convolutions handed to
    oneDNN, ``jsr.onednn``) ``fast_conv`` with XLA's weight gradient and plain flipped-kernel input gradients:
    the forms oneDNN runs fastest (strided convs' input gradients: ``input_grad_phases``, as on 'fast')."""
    if path not in CONV_PATHS:
        raise ValueError(f"conv={path!r}: choose from {CONV_PATHS}")
    if path == "winograd":
        return _winograd_fast_conv
    if path == "onednn":
        return _onednn_fast_conv
    return None if path == "xla" else fast_conv


_winograd_fast_conv = functools.partial(fast_conv, winograd_3x3=True)
_onednn_fast_conv = functools.partial(fast_conv, weight_grad="xla", flipped_input_grad=True)


def resolve_conv(
    choice: str,
    backend: str,
    needs_forward_mode: bool = False,
    library_convs: bool = False,
    winograd_pays: bool = True,
) -> str:
    """A config's ``model.conv`` ('auto', 'xla', 'fast', 'winograd' or 'onednn') as the path to build: 'auto' is
    'winograd' on CPU where ``winograd_pays`` (a float32 model whose architecture's convs run faster by it; measured
    with benchmarks/run.py --compare-conv), 'fast' on CPU otherwise (its weight gradients were measured faster than
    XLA's), 'onednn' there when ``library_convs`` (XLA hands this run's CPU convolutions to oneDNN), and 'xla' on
    GPU/TPU, whose own kernels were not beaten, and wherever the model is differentiated in forward mode
    (``fast_conv`` has no jvp rule)."""
    if choice not in CONFIG_CONV_CHOICES:
        raise ValueError(f"conv={choice!r}: choose from {CONFIG_CONV_CHOICES}")
    if choice == "auto":
        if backend != "cpu" or needs_forward_mode:
            return "xla"
        if library_convs:
            return "onednn"
        return "winograd" if winograd_pays else "fast"
    if choice in ("winograd", "onednn") and backend != "cpu":
        raise ValueError(f"conv={choice!r} is a CPU path (this backend is {backend}): use 'auto' or 'xla'")
    return choice
