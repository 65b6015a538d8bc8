"""The generator's last conv (64 -> 3 channels, stride 1, 'SAME') in other forms against XLA's, float32, one process.

    python benchmarks/last_conv.py [--kernel 3] [--pairs 7] [--json out.json]

``--kernel 3`` is SRGAN-PyTorch's layout (the benchmarked SRResNet, ``benchmarks/run.py``), ``--kernel 9`` the SRGAN
paper's (leftthomas). Forms:
  xla        lax.conv_general_dilated
  rows       one 1xk conv to k x 3 channels (a GEMM 3k wide instead of 3), then k shifted row sums
  pointwise  one 1x1 conv to k*k x 3 channels, then k*k shifted sums
  fft        rfft2 of the input and kernel, products summed over the 64 channels, irfft2
  winograd   the kernel as a (k/3)x(k/3) grid of 3x3 kernels: one Winograd F(4x4, 3x3) conv to (k/3)^2 x 3
             channels on the input padded by k/2 - 1, then (k/3)^2 shifted sums
Each form is timed alternately with the others (``--pairs`` rounds after a warm-up call) at the upscale's shape
(1 x 512 x 512) and the training shape (16 x 96 x 96); its error is the largest difference from XLA's output relative
to that output's largest entry.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (benchmarks/run.py: the machine's name)

from jsr import host_memory  # noqa: E402
from jsr.ops import winograd  # noqa: E402

DIMENSIONS = ("NHWC", "HWIO", "NHWC")
SHAPES = {"upscale_1x512": (1, 512), "train_16x96": (16, 96)}


def xla(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DIMENSIONS)


def rows(x, w):
    k, _, cin, cout = w.shape
    pad, h = k // 2, x.shape[1]
    per_row = jnp.transpose(w, (1, 2, 0, 3)).reshape(1, k, cin, k * cout)  # kernel row kh -> channels kh*cout...
    z = lax.conv_general_dilated(x, per_row, (1, 1), ((0, 0), (pad, pad)), dimension_numbers=DIMENSIONS)
    z = jnp.pad(z, ((0, 0), (pad, pad), (0, 0), (0, 0)))
    return sum(z[:, kh : kh + h, :, kh * cout : (kh + 1) * cout] for kh in range(k))


def pointwise(x, w):
    k, _, cin, cout = w.shape
    pad, (_, h, width, _) = k // 2, x.shape
    z = jnp.einsum("nhwc,cq->nhwq", x, jnp.transpose(w, (2, 0, 1, 3)).reshape(cin, k * k * cout))
    z = jnp.pad(z, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    taps = ((kh, kw, (kh * k + kw) * cout) for kh in range(k) for kw in range(k))
    return sum(z[:, kh : kh + h, kw : kw + width, i : i + cout] for kh, kw, i in taps)


def fft(x, w):
    k = w.shape[0]
    pad, (_, h, width, _) = k // 2, x.shape
    size = (h + k - 1, width + k - 1)
    xf = jnp.fft.rfft2(jnp.transpose(x, (0, 3, 1, 2)), s=size)
    wf = jnp.fft.rfft2(jnp.transpose(w[::-1, ::-1], (3, 2, 0, 1)), s=size)  # flipped: a correlation
    y = jnp.fft.irfft2(jnp.einsum("nchw,ochw->nohw", xf, wf), s=size)[:, :, pad : pad + h, pad : pad + width]
    return jnp.transpose(y, (0, 2, 3, 1))


def winograd_grid(x, w):
    k, _, cin, cout = w.shape
    m, pad, (_, h, width, _) = k // 3, (k - 3) // 2, x.shape
    blocks = w.reshape(m, 3, m, 3, cin, cout).transpose(1, 3, 4, 0, 2, 5).reshape(3, 3, cin, m * m * cout)
    z = winograd.conv3x3(jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))), blocks)
    taps = ((i, j, (i * m + j) * cout) for i in range(m) for j in range(m))
    return sum(z[:, 3 * i : 3 * i + h, 3 * j : 3 * j + width, c : c + cout] for i, j, c in taps)


FORMS = {"xla": xla, "rows": rows, "pointwise": pointwise, "fft": fft, "winograd": winograd_grid}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", type=int, default=3, choices=[3, 9], help="kernel side (3: SRGAN-PyTorch, 9: the paper)")
    p.add_argument("--pairs", type=int, default=7, help="timed rounds over all forms (after one warm-up call)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    host_memory.configure()  # as every jsr command does
    results, k = {}, args.kernel
    for case, (batch, side) in SHAPES.items():
        x = jax.random.normal(jax.random.key(0), (batch, side, side, 64))
        w = jax.random.normal(jax.random.key(1), (k, k, 64, 3)) / (8.0 * k)
        jitted = {name: jax.jit(form) for name, form in FORMS.items()}
        reference = jitted["xla"](x, w).block_until_ready()
        scale = float(jnp.max(jnp.abs(reference)))
        errors = {name: float(jnp.max(jnp.abs(f(x, w) - reference))) / scale for name, f in jitted.items()}
        times = {name: [] for name in FORMS}
        for _ in range(args.pairs):
            for name, f in jitted.items():
                start = time.perf_counter()
                f(x, w).block_until_ready()
                times[name].append(time.perf_counter() - start)
        results[case] = {
            name: {"median_ms": 1e3 * statistics.median(times[name]), "max_rel_error": errors[name]} for name in FORMS
        }
        print(
            case, ", ".join(f"{n} {r['median_ms']:.1f} ms ({r['max_rel_error']:.0e})" for n, r in results[case].items())
        )
    report = {**run.machine_record(), "jax": jax.__version__, "kernel": args.kernel, "cases": results}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
