"""Winograd F(4x4, 3x3) (``jsr.ops.winograd``) against XLA's convolution, per conv, float32.

    python benchmarks/winograd.py [--pairs 21] [--json out.json]
    python benchmarks/winograd.py --train [--pairs 15] [--json out.json]

``--train``: one conv's training work (forward, input gradient and kernel gradient of ``sum(conv(x, k) * g)``) at
the training shapes (batch 16), conv path 'fast' (``jsr.ops.conv.fast_conv``: XLA's forward and input gradient,
its chosen kernel gradient) against 'winograd' (all three by Winograd), timed alternately; errors against XLA's
gradients (largest difference relative to the largest entry). TRAIN_CASES names each shape's owner.

Cases (batch 1, an image of 128x128 -> 512x512): the body's 64 -> 64 at 128x128 (33 per image), the upsamplers'
64 -> 256 at 128x128 and at 256x256, and the last conv 64 -> 3 at 512x512 (which the dispatcher leaves to XLA:
few output channels). Each case times the two jitted functions alternately (``--pairs`` pairs after warm-up) and
prints both medians, the median of the per-pair time ratios (robust to the machine's drift) and the error of each
against a float64 reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jsr.ops.winograd import winograd_conv3x3

CASES = {"body_64_64_128": (128, 64, 64), "up_64_256_128": (128, 64, 256), "up_64_256_256": (256, 64, 256)}
CASES["last_64_3_512"] = (512, 64, 3)


# (batch, side, Cin, Cout) at SRResNet's training patch (LR 24 -> HR 96) and the SRGAN discriminator's stride-1 convs
TRAIN_CASES = {
    "body_64_64_24": (16, 24, 64, 64),  # SRResNet 16x64: 33 per step
    "up_64_256_24": (16, 24, 64, 256),
    "up_64_256_48": (16, 48, 64, 256),
    "quickstart_32_32_24": (16, 24, 32, 32),  # the quickstart's 8x32 body
    "disc_64_128_48": (16, 48, 64, 128),
    "disc_128_256_24": (16, 24, 128, 256),
    "disc_256_512_12": (16, 12, 256, 512),
}


def xla_conv(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def float64_conv(x, k):
    """The exact result (to float64) by nine shifted matmuls in numpy."""
    x, k = np.asarray(x, np.float64)[0], np.asarray(k, np.float64)
    h, w, _ = x.shape
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    return sum(padded[i : i + h, j : j + w] @ k[i, j] for i in range(3) for j in range(3))[None]


def alternate(fns: dict, args: tuple, pairs: int, warmup: int) -> dict[str, list[float]]:
    """Each function's seconds per call, after ``warmup`` calls each, the functions called in turn ``pairs`` times."""
    for f in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(f(*args))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(pairs):
        for name, f in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(f(*args))
            times[name].append(time.perf_counter() - start)
    return times


def run_case(side: int, cin: int, cout: int, pairs: int) -> dict:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, side, side, cin), np.float32))
    k = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) * np.sqrt(2 / (9 * cin)))
    fns = {"xla": jax.jit(xla_conv), "winograd": jax.jit(winograd_conv3x3)}
    exact = float64_conv(x, k)
    scale = float(np.abs(exact).max())
    errors = {name: float(np.abs(np.asarray(f(x, k), np.float64) - exact).max()) / scale for name, f in fns.items()}
    times = alternate(fns, (x, k), pairs, warmup=3)
    ratios = [w / x_ for w, x_ in zip(times["winograd"], times["xla"], strict=True)]
    flop = 2 * side * side * 9 * cin * cout
    return {
        "xla_ms": statistics.median(times["xla"]) * 1e3,
        "winograd_ms": statistics.median(times["winograd"]) * 1e3,
        "median_pair_ratio": statistics.median(ratios),
        "xla_gflop_per_s": flop / statistics.median(times["xla"]) / 1e9,
        "relative_error": errors,
    }


def run_train_case(batch: int, side: int, cin: int, cout: int, pairs: int) -> dict:
    from jsr.ops.conv import conv_function

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, side, side, cin), np.float32))
    k = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) * np.sqrt(2 / (9 * cin)))
    g = jnp.asarray(rng.standard_normal((batch, side, side, cout), np.float32))

    def train_work(conv):
        loss = lambda x, k: jnp.sum(conv(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) * g)  # noqa: E731
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

    fns = {path: train_work(conv_function(path) or lax.conv_general_dilated) for path in ("xla", "fast", "winograd")}
    _, (rx, rk) = fns.pop("xla")(x, k)
    errors = {}
    for name, f in fns.items():
        _, (dx, dk) = f(x, k)
        errors[name] = {
            "dx": float(jnp.max(jnp.abs(dx - rx)) / jnp.max(jnp.abs(rx))),
            "dk": float(jnp.max(jnp.abs(dk - rk)) / jnp.max(jnp.abs(rk))),
        }
    times = alternate(fns, (x, k), pairs, warmup=2)
    flop = 3 * 2 * batch * side * side * 9 * cin * cout
    return {
        "shape": {"batch": batch, "side": side, "cin": cin, "cout": cout},
        "fast_ms": statistics.median(times["fast"]) * 1e3,
        "winograd_ms": statistics.median(times["winograd"]) * 1e3,
        "median_pair_ratio": statistics.median(w / f for w, f in zip(times["winograd"], times["fast"], strict=True)),
        "fast_gflop_per_s": flop / statistics.median(times["fast"]) / 1e9,
        "relative_error_vs_xla": errors,
    }


def main_train(args) -> dict:
    results = {}
    for name in args.cases.split(",") if args.cases else TRAIN_CASES:
        r = results[name] = run_train_case(*TRAIN_CASES[name], args.pairs)
        e = r["relative_error_vs_xla"]["winograd"]
        print(
            f"{name:20s} fast {r['fast_ms']:8.2f} ms ({r['fast_gflop_per_s']:.0f} GFLOP/s)"
            f"  winograd {r['winograd_ms']:8.2f} ms  pair ratio {r['median_pair_ratio']:.2f}"
            f"  winograd error vs xla: dx {e['dx']:.1e}, dk {e['dk']:.1e}",
            flush=True,
        )
    return results


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=21)
    p.add_argument("--cases", default="", help=f"comma-separated subset of {','.join(CASES)} (--train: TRAIN_CASES)")
    p.add_argument("--train", action="store_true", help="forward + both gradients at training shapes: fast vs winograd")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.train:
        results = main_train(args)
        if args.json:
            Path(args.json).write_text(json.dumps({"jax": jax.__version__, "train_cases": results}, indent=2) + "\n")
        return results
    results = {}
    for name in args.cases.split(",") if args.cases else CASES:
        r = results[name] = run_case(*CASES[name], args.pairs)
        errors = r["relative_error"]
        print(
            f"{name:16s} xla {r['xla_ms']:7.2f} ms ({r['xla_gflop_per_s']:.0f} GFLOP/s)"
            f"  winograd {r['winograd_ms']:7.2f} ms  pair ratio {r['median_pair_ratio']:.2f}"
            f"  error vs float64: xla {errors['xla']:.1e}, winograd {errors['winograd']:.1e}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"jax": jax.__version__, "cases": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
