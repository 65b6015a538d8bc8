"""Weight-gradient formulations of a convolution (``jsr.ops.conv.WEIGHT_GRADS``) against XLA's, in GFLOP/s.

    /tmp/v312/bin/python benchmarks/conv_grad.py [--repeats 20] [--shapes body,tail,...] [--json out.json]

For each conv shape of SRResNet / the discriminator at training size (batch 16, LR 24 -> HR 96), it times, jitted
and warmed up, the forward conv, XLA's input gradient and every weight-gradient formulation (median of repeats),
checks each formulation against XLA's weight gradient, and prints GFLOP/s (2 * N * Ho * Wo * kh * kw * Cin * Cout
per pass). ``matmul`` is a 4096^2 float32 matmul: the machine's dense peak for comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jsr.ops.conv import NHWC, WEIGHT_GRADS

# name: (batch, H, W, Cin, Cout, kernel, stride, count per SRResNet/SRGAN train step)
SHAPES = {
    "body": (16, 24, 24, 64, 64, 3, 1, 33),  # 32 residual-block convs + conv02
    "conv01": (16, 24, 24, 3, 64, 9, 1, 1),
    "tail_0": (16, 24, 24, 64, 256, 3, 1, 1),
    "tail_1": (16, 48, 48, 64, 256, 3, 1, 1),
    "last_conv": (16, 96, 96, 64, 3, 3, 1, 1),
    "d_conv01": (16, 96, 96, 3, 64, 3, 1, 1),
    "d_conv02": (16, 96, 96, 64, 64, 3, 2, 1),
    "d_body_0_conv1": (16, 48, 48, 64, 128, 3, 1, 1),
    "d_body_0_conv2": (16, 48, 48, 128, 128, 3, 2, 1),
    "d_body_1_conv1": (16, 24, 24, 128, 256, 3, 1, 1),
    "d_body_1_conv2": (16, 24, 24, 256, 256, 3, 2, 1),
    "d_body_2_conv1": (16, 12, 12, 256, 512, 3, 1, 1),
    "d_body_2_conv2": (16, 12, 12, 512, 512, 3, 2, 1),
}


def median_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_shape(name, spec, repeats: int, formulations) -> dict:
    n, h, w, cin, cout, k, s, count = spec
    pad = ((k // 2, k // 2), (k // 2, k // 2))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, h, w, cin), np.float32))
    kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32) * 0.05)
    conv = lambda a, b: lax.conv_general_dilated(a, b, (s, s), pad, dimension_numbers=NHWC)  # noqa: E731
    y = conv(x, kernel)
    dy = jnp.asarray(rng.standard_normal(y.shape, np.float32))
    flops = 2.0 * n * y.shape[1] * y.shape[2] * k * k * cin * cout
    row = {"shape": spec[:7], "count": count, "gflop": flops / 1e9}
    row["forward"] = flops / median_time(jax.jit(conv), x, kernel, repeats=repeats) / 1e9
    input_grad = jax.jit(lambda d: jax.vjp(lambda a: conv(a, kernel), x)[1](d)[0])
    row["input_grad"] = flops / median_time(input_grad, dy, repeats=repeats) / 1e9
    reference = None
    for f in formulations:
        fn = jax.jit(lambda a, d, f=f: WEIGHT_GRADS[f](a, d, kernel.shape, (s, s), pad))
        got = fn(x, dy)
        if reference is None:
            reference = got
        err = float(jnp.max(jnp.abs(got - reference)) / (jnp.max(jnp.abs(reference)) + 1e-30))
        row[f"wgrad_{f}"] = flops / median_time(fn, x, dy, repeats=repeats) / 1e9
        row[f"rel_err_{f}"] = err
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--formulations", default=",".join(WEIGHT_GRADS), help="'xla' first: the reference")
    p.add_argument("--json")
    args = p.parse_args(argv)
    formulations = args.formulations.split(",")
    a = jnp.ones((4096, 4096), jnp.float32)
    matmul = 2 * 4096**3 / median_time(jax.jit(jnp.dot), a, a, repeats=3) / 1e9
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; 4096^2 f32 matmul {matmul:.0f} GFLOP/s")
    head = f"{'shape':<16}{'GFLOP':>7}{'fwd':>7}{'dx':>7}" + "".join(f"{'dW ' + f:>12}" for f in formulations)
    print(head + "   (GFLOP/s)")
    rows = {}
    for name in args.shapes.split(","):
        row = bench_shape(name, SHAPES[name], args.repeats, formulations)
        rows[name] = row
        print(
            f"{name:<16}{row['gflop']:>7.3f}{row['forward']:>7.0f}{row['input_grad']:>7.0f}"
            + "".join(f"{row['wgrad_' + f]:>12.0f}" for f in formulations)
            + "   max rel err "
            + " ".join(f"{row['rel_err_' + f]:.1e}" for f in formulations[1:]),
            flush=True,
        )
    # Weight-gradient time of one train step's convs (each shape times its count), per formulation.
    for f in formulations:
        total = sum(r["gflop"] * r["count"] / r[f"wgrad_{f}"] for r in rows.values())
        print(f"weight-gradient time per step with '{f}': {total * 1e3:.1f} ms")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"jax": jax.__version__, "matmul_gflops": matmul, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
