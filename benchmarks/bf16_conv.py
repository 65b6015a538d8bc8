"""Can a CPU's bf16 dot units speed up SRResNet's 3x3 convolutions? Forward + backward of one conv, four ways.

    python benchmarks/bf16_conv.py [--json out.json] [--repeats 20] [--cpu-onednn on]

Per shape (the SRResNet body at LR 24, batch 16; an upsampler conv at 48 px): the time of ``jax.value_and_grad`` of
sum(conv(x, w) * g) with respect to x and w, median of ``--repeats`` after warm-up, for
- ``xla_f32``: lax.conv_general_dilated in float32 (jsr's float32 path),
- ``xla_bf16``: the same with bf16 inputs and kernel (what ``compute_dtype=bfloat16`` runs today),
- ``im2col_bf16``: the nine shifted slices concatenated on channels and ONE bf16 dot with float32 accumulation
  (``preferred_element_type``), differentiated by JAX (its gradients are dots too),
- ``taps_bf16``: nine bf16 dots (one per kernel tap) accumulated in float32,
- ``onednn_path_bf16``: jsr's conv path 'onednn' (``jsr.ops.conv``: XLA's weight gradient, the input gradient as a
  plain conv with the flipped kernel), the one a bf16 training run takes when ``--cpu-onednn`` hands XLA's
  convolutions to oneDNN (``jsr.onednn``; compare with ``xla_bf16`` in the same run),
- ``winograd_f32``: jsr's float32 Winograd path (``conv='winograd'``), the float32 baseline to beat.
Also each forward output's relative error against the float32 XLA conv at HIGHEST precision, and XLA's bf16 / f32
matmul rate at 2048^2 for reference.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform

import jax
import jax.numpy as jnp
from conv_grad import median_time  # benchmarks/ (this script's folder is on sys.path)
from jax import lax

from jsr import onednn
from jsr.ops.conv import NHWC, conv_function

SHAPES = {"body_lr24": (16, 24, 24, 64, 64), "tail_48": (16, 48, 48, 64, 256)}  # N, H, W, Cin, Cout


def conv_xla(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _slices(x):
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [xp[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)]


def conv_im2col(x, w):
    patches = jnp.concatenate(_slices(x), axis=-1)
    k = w.reshape(-1, w.shape[-1])
    return lax.dot_general(patches, k, (((3,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def conv_taps(x, w):
    out = 0.0
    for t, s in enumerate(_slices(x)):
        out = out + lax.dot_general(s, w[t // 3, t % 3], (((3,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return out


def conv_path(path, x, w):
    return conv_function(path)(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)


def matmul_rate(dtype, repeats: int) -> float:
    a = jnp.ones((2048, 2048), dtype)
    f = jax.jit(lambda a, b: lax.dot(a, b, preferred_element_type=jnp.float32))
    return 2 * 2048**3 / median_time(f, a, a, repeats=repeats)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--cpu-onednn", default="off", choices=onednn.CHOICES, help="config.cpu_onednn for this process")
    args = p.parse_args(argv)
    cpu_onednn = onednn.configure(args.cpu_onednn, "bfloat16")  # before JAX starts its backend
    key = jax.random.key(0)
    report = {"machine": platform.processor() or platform.machine(), "jax": jax.__version__, "shapes": {}}
    report["cpu_onednn"] = cpu_onednn
    for name, (n, h, w_, cin, cout) in SHAPES.items():
        kx, kw, kg = jax.random.split(jax.random.fold_in(key, hash(name) % 1000), 3)
        x = jax.random.normal(kx, (n, h, w_, cin))
        w = jax.random.normal(kw, (3, 3, cin, cout)) / (9 * cin) ** 0.5
        g = jax.random.normal(kg, (n, h, w_, cout))
        with jax.default_matmul_precision("highest"):
            reference = jax.jit(conv_xla)(x, w)
        flops = 3 * 2 * n * h * w_ * 9 * cin * cout  # forward + input grad + weight grad
        row = {}
        for method, fn, dtype in (
            ("xla_f32", conv_xla, jnp.float32),
            ("xla_bf16", conv_xla, jnp.bfloat16),
            ("im2col_bf16", conv_im2col, jnp.bfloat16),
            ("taps_bf16", conv_taps, jnp.bfloat16),
            ("onednn_path_bf16", functools.partial(conv_path, "onednn"), jnp.bfloat16),
            ("winograd_f32", functools.partial(conv_path, "winograd"), jnp.float32),
        ):
            loss = lambda x, w, fn=fn, g=g: jnp.sum(fn(x, w).astype(jnp.float32) * g)  # noqa: E731
            step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
            xs, ws = x.astype(dtype), w.astype(dtype)
            seconds = median_time(step, xs, ws, repeats=args.repeats)
            out = jax.jit(fn)(xs, ws).astype(jnp.float32)
            error = float(jnp.linalg.norm(out - reference) / jnp.linalg.norm(reference))
            row[method] = {"ms": seconds * 1e3, "gflops": flops / seconds / 1e9, "rel_error": error}
            print(f"{name:10s} {method:12s} {seconds * 1e3:8.2f} ms {flops / seconds / 1e9:7.1f} GFLOP/s"
                  f"  rel. error {error:.2e}", flush=True)  # fmt: skip
        report["shapes"][name] = row
    report["matmul_2048_gflops"] = {
        "float32": matmul_rate(jnp.float32, args.repeats) / 1e9,
        "bfloat16": matmul_rate(jnp.bfloat16, args.repeats) / 1e9,
    }
    print(f"matmul 2048^2: {report['matmul_2048_gflops']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
