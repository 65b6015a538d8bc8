"""Cost of one Delta-STN weight step (general + response) vs one plain train step of the same model and loss.

    python benchmarks/deltastn_step.py [--batch 16] [--lr_size 24] [--n_feats 64] [--blocks 16] [--runs 10] [--json]

Model: the SRResNet generator (x4, BatchNorm in training mode with its statistics updated, as the trainer does).
Loss, the same in both: per-example pixel MSE on inputs with per-example Gaussian noise and brightness scaling
(stand-ins for augmentation magnitudes) + weight decay on every conv kernel. Hyperparameters in Delta-STN: noise,
brightness, weight decay (h = 3). Optimiser: SGD momentum 0.9 for everything. Both steps are jitted; the timing is
the median of ``--runs`` calls after ``--warmup`` calls (compilation excluded), blocking on the result, the
steps timed in alternation so that load drift on a shared machine affects them alike. The hyper step
(once every K = 5 weight steps) is timed too, and the amortised cost per weight step is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jsr.deltastn import DeltaSTN, Hyper, HyperSpace
from jsr.models import Generator

SPACE = HyperSpace(
    [Hyper("noise", 0.0, 0.2, 0.02), Hyper("brightness", 0.0, 0.5, 0.1), Hyper("wd", 0.0, None, 1e-4, "positive")]
)


def degrade(batch, hp, rng):
    """Per-example brightness scaling and Gaussian noise on the LR input (magnitudes per example)."""
    k_scale, k_noise = jax.random.split(rng)
    b = batch["lr"].shape[0]
    scale = 1.0 + hp["brightness"] * jax.random.uniform(k_scale, (b,), minval=-1.0, maxval=1.0)
    lr = batch["lr"] * scale[:, None, None, None]
    return lr + hp["noise"][:, None, None, None] * jax.random.normal(k_noise, lr.shape), batch["hr"] * scale[
        :, None, None, None
    ]


def train_loss(net, batch, hp, rng):
    lr, hr = degrade(batch, hp, rng)
    sr = net(lr, train=True, mutable=["batch_stats"])
    return jnp.mean(jnp.square(sr - hr), axis=(1, 2, 3)) + hp["wd"] * net.weight_sq_norm()


def val_loss(net, batch, rng):
    del rng
    return jnp.mean(jnp.square(net(batch["lr"]) - batch["hr"]), axis=(1, 2, 3))


def plain_step_fn(model, optimizer):
    """The ordinary train step of the same model and loss at fixed hyperparameters."""
    hp0 = SPACE.values(SPACE.init_u())

    def loss_fn(params, batch_stats, batch, rng):
        b = batch["lr"].shape[0]
        hp = {name: jnp.full((b,), value) for name, value in hp0.items()}
        lr, hr = degrade(batch, hp, rng)
        sr, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, lr, train=True, mutable=["batch_stats"]
        )
        kernels = [x for p, x in jax.tree_util.tree_flatten_with_path(params)[0] if "kernel" in str(p[-1])]
        wd = hp0["wd"] * sum(jnp.sum(jnp.square(k)) for k in kernels)
        return jnp.mean(jnp.square(sr - hr)) + wd, updates

    @jax.jit
    def step(params, batch_stats, opt_state, batch, rng):
        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, batch, rng)
        deltas, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, deltas), updates["batch_stats"], opt_state, loss

    return step


def interleaved_medians(fns: dict, runs: int, warmup: int) -> dict:
    """Median seconds per call of each function, timed in alternation (one call of each per round) so that a
    machine whose load drifts (a shared CPU) biases every function alike and the ratios stay meaningful."""
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr_size", type=int, default=24)
    parser.add_argument("--n_feats", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    model = Generator(n_feats=args.n_feats, num_blocks=args.blocks, scale=4)
    rng = np.random.default_rng(0)
    batch = {
        "lr": jnp.asarray(rng.uniform(-1, 1, (args.batch, args.lr_size, args.lr_size, 3)), jnp.float32),
        "hr": jnp.asarray(rng.uniform(-1, 1, (args.batch, 4 * args.lr_size, 4 * args.lr_size, 3)), jnp.float32),
    }
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), batch["lr"][:1])
    sgd = optax.sgd(1e-3, momentum=0.9)

    plain = plain_step_fn(model, sgd)
    opt_state = sgd.init(variables["params"])
    key = jax.random.PRNGKey(1)
    stn = DeltaSTN(model, SPACE, train_loss, val_loss, general_optimizer=sgd, response_optimizer=sgd)
    state = stn.init(jax.random.PRNGKey(2), variables, batch["lr"][:1])
    weight, hyper = jax.jit(stn.weight_step), jax.jit(stn.hyper_step)
    medians = interleaved_medians(
        {
            "plain": lambda: plain(variables["params"], variables["batch_stats"], opt_state, batch, key),
            "weight": lambda: weight(state, batch),
            "hyper": lambda: hyper(state, batch),
        },
        args.runs,
        args.warmup,
    )
    t_plain, t_weight, t_hyper = medians["plain"], medians["weight"], medians["hyper"]

    k = stn.weight_steps_per_hyper
    result = {
        "device": str(jax.devices()[0].platform),
        "config": vars(args),
        "plain_step_ms": 1e3 * t_plain,
        "deltastn_weight_step_ms": 1e3 * t_weight,
        "deltastn_hyper_step_ms": 1e3 * t_hyper,
        "ratio_weight_step": t_weight / t_plain,
        "ratio_amortised": (t_weight + t_hyper / k) / t_plain,
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for name, value in result.items():
            print(f"{name:26s} {value:.3f}" if isinstance(value, float) else f"{name:26s} {value}")
    return result


if __name__ == "__main__":
    main()
