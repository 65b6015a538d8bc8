"""The most steps/s the trainer's host side allows: its input pipeline and loop around a nearly free jitted step.

    python benchmarks/trainer_loop.py [--batch 64] [--patch 24] [--steps 300]

The real ``jsr.data.make_train_iterator`` (the quickstart's data: scikit-image's bundled photos, random crops)
feeds a jitted step that only touches its batch; metrics stay on the device and are read every 100 steps, as in
``jsr.train``. If a device's real step is faster than this rate, the input pipeline is the bottleneck there.
Measured on the 2-core CPU machine at batch 64 (LR 24 -> HR 96): 6.8 steps/s before the pipeline fixes of
2026-11-26 (Grain's index shuffle and per-example prefetch), 134-156 after (2 threads by default there; 8 threads:
87-112); an H200 runs the bf16 MSE step at 126-153 steps/s.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--patch", type=int, default=24, help="LR crop (HR = 4x)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=0, help="config.data.num_threads (0 = the trainer's default)")
    p.add_argument("--workers", type=int, default=0, help="config.data.num_workers (Grain worker processes)")
    args = p.parse_args(argv)

    from jsr import data
    from jsr.parallel import make_mesh

    cfg = data.default_data_config()
    cfg.update(source="samples", patch_size=args.patch, num_threads=args.threads, num_workers=args.workers)
    iterator = data.make_train_iterator(cfg, args.batch, 0, make_mesh())
    step = jax.jit(lambda s, b: (s + 1, {"m": jnp.mean(b["hr"][:, :8, :8].astype(jnp.float32))}))
    state, pending = jnp.zeros(()), []
    try:
        for _ in range(10):
            state, _ = step(state, next(iterator))
        jax.block_until_ready(state)
        start = time.perf_counter()
        for i in range(args.steps):
            state, metrics = step(state, next(iterator))
            pending.append(metrics)
            if (i + 1) % 100 == 0:
                _ = [float(m["m"]) for m in pending]
                pending = []
        jax.block_until_ready(state)
        rate = args.steps / (time.perf_counter() - start)
    finally:
        iterator.close()
    threads = data.host_threads(cfg)
    print(
        f"trainer loop with a free step: {rate:.1f} steps/s at batch {args.batch} ({rate * args.batch:.0f} images/s)"
        f", {threads} host threads, {args.workers} worker processes"
    )
    return rate


if __name__ == "__main__":
    main()
