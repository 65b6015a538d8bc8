"""Winograd F(4x4, 3x3) (``jsr.ops.winograd``) against XLA's convolution, per SRResNet inference conv, float32.

    python benchmarks/winograd.py [--pairs 21] [--json out.json]

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


def xla_conv(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def float64_conv(x, k):
    """The exact result (to float64) by nine shifted matmuls in numpy."""
    x, k = np.asarray(x, np.float64)[0], np.asarray(k, np.float64)
    h, w, _ = x.shape
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    return sum(padded[i : i + h, j : j + w] @ k[i, j] for i in range(3) for j in range(3))[None]


def run_case(side: int, cin: int, cout: int, pairs: int) -> dict:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, side, side, cin), np.float32))
    k = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) * np.sqrt(2 / (9 * cin)))
    fns = {"xla": jax.jit(xla_conv), "winograd": jax.jit(winograd_conv3x3)}
    exact = float64_conv(x, k)
    scale = float(np.abs(exact).max())
    errors = {name: float(np.abs(np.asarray(f(x, k), np.float64) - exact).max()) / scale for name, f in fns.items()}
    for f in fns.values():
        for _ in range(3):
            f(x, k).block_until_ready()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(pairs):
        for name, f in fns.items():
            start = time.perf_counter()
            f(x, k).block_until_ready()
            times[name].append(time.perf_counter() - start)
    ratios = [w / x_ for w, x_ in zip(times["winograd"], times["xla"], strict=True)]
    flop = 2 * side * side * 9 * cin * cout
    return {
        "xla_ms": statistics.median(times["xla"]) * 1e3,
        "winograd_ms": statistics.median(times["winograd"]) * 1e3,
        "median_pair_ratio": statistics.median(ratios),
        "xla_gflop_per_s": flop / statistics.median(times["xla"]) / 1e9,
        "relative_error": errors,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=21)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    results = {}
    for name in args.cases.split(","):
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
