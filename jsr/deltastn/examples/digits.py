"""Delta-STN on scikit-learn's bundled digits: an MLP tuning its per-layer dropout and input noise.

    python -m jsr.deltastn.examples.digits [--steps 3000] [--seeds 0 1 2] [--json]

Methods, each trained with the same number of weight updates (``--steps``, batch 128):
- ``fixed``: the initial hyperparameters, never changed (a plain training run: the general step alone).
- ``random search``: ``--trials`` settings drawn uniformly in each hyperparameter's range, each trained for
  steps / trials updates; the one with the lowest validation loss is reported.
- ``delta-stn``: warm-up, then K = 5 weight steps : 1 hyper step (hyper steps use validation batches and are not
  counted as training steps; each weight step is a general plus a response update).
Reported: the general network's loss and accuracy on the validation and test sets (mean +- std over seeds).

Dropout is a hard Bernoulli mask with a per-example rate (data to the model, scaled by 1 / (1 - rate)); the mask has
no gradient w.r.t. the rate, which is fine: Delta-STN's hypergradient flows only through the learned response.
Input noise is Gaussian with a per-example standard deviation. Data: 1797 8x8 digits, split per seed into 600
training, 300 validation and 897 test examples, so that an unregularised MLP overfits.
"""

from __future__ import annotations

import argparse
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jsr.deltastn import DeltaSTN, Hyper, HyperSpace, fit, jit_steps

HIDDEN = (256, 256)
SPACE = HyperSpace(
    [
        Hyper("dropout_0", 0.0, 0.95, 0.05),
        Hyper("dropout_1", 0.0, 0.95, 0.05),
        Hyper("input_noise", 0.0, 1.5, 0.05),
    ]
)
BATCH = 128
N_TRAIN, N_VAL = 600, 300


def load_splits(seed: int) -> dict:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    parts = np.split(order, [N_TRAIN, N_TRAIN + N_VAL])
    return {name: {"x": x[idx], "y": y[idx]} for name, idx in zip(("train", "val", "test"), parts, strict=True)}


class MLP(nn.Module):
    """Dense-ReLU layers, each followed by dropout at a per-example rate ``rates[:, i]`` when training."""

    hidden: tuple[int, ...] = HIDDEN
    classes: int = 10

    @nn.compact
    def __call__(self, x, rates=None, train: bool = False):
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f"dense_{i}")(x))
            if train:
                rate = rates[:, i : i + 1]
                keep = jax.random.uniform(self.make_rng("dropout"), x.shape) >= rate
                x = jnp.where(keep, x / (1.0 - rate), 0.0)
        return nn.Dense(self.classes, name="logits")(x)


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_loss(net, batch, hp, rng):
    k_noise, k_drop = jax.random.split(rng)
    x = batch["x"] + hp["input_noise"][:, None] * jax.random.normal(k_noise, batch["x"].shape)
    rates = jnp.stack([hp["dropout_0"], hp["dropout_1"]], axis=1)
    return cross_entropy(net(x, rates, train=True, rngs={"dropout": k_drop}), batch["y"])


def val_loss(net, batch, rng):
    del rng
    return cross_entropy(net(batch["x"]), batch["y"])


def build(warmup: int) -> DeltaSTN:
    return DeltaSTN(
        MLP(),
        SPACE,
        train_loss,
        val_loss,
        general_optimizer=optax.sgd(0.05, momentum=0.9),
        response_optimizer=optax.sgd(0.05, momentum=0.9),
        warmup_steps=warmup,
    )


def batches(split: dict, seed: int):
    """Endless shuffled batches (each epoch a new permutation; the last incomplete batch is dropped)."""
    rng = np.random.default_rng(seed)
    n = len(split["y"])
    while True:
        order = rng.permutation(n)
        for start in range(0, n - BATCH + 1, BATCH):
            idx = order[start : start + BATCH]
            yield {"x": split["x"][idx], "y": split["y"][idx]}


def evaluate(model: nn.Module, params, split: dict) -> tuple[float, float]:
    logits = _logits(model, params, split["x"])
    loss = float(jnp.mean(cross_entropy(logits, split["y"])))
    return loss, float(jnp.mean(jnp.argmax(logits, -1) == split["y"]))


@jax.jit
def _apply(params, x):
    return MLP().apply({"params": params}, x)


def _logits(model, params, x):
    del model  # the example's MLP; jitted once for every method and seed
    return _apply(params, x)


def train_fixed(stn: DeltaSTN, data: dict, u, steps: int, seed: int, general_step) -> dict:
    """A plain run at fixed hyperparameters ``u``: the general step alone (e = 0, no response, no hyper step)."""
    state = init_state(stn, data, seed, u)
    it = batches(data["train"], seed)
    for _ in range(steps):
        state, _ = general_step(state, next(it))
    return state.params


def init_state(stn: DeltaSTN, data: dict, seed: int, u=None):
    x = jnp.asarray(data["train"]["x"][:2])
    variables = stn.model.init(jax.random.PRNGKey(seed), x)
    return stn.init(jax.random.PRNGKey(seed + 1000), variables, x, u=u)


def _general_only(stn: DeltaSTN):
    @jax.jit
    def step(state, batch):
        rng, key = jax.random.split(state.rng)
        state, metrics = stn.general_step(state, batch, key)
        return state.replace(step=state.step + 1, rng=rng), metrics

    return step


def run_seed(seed: int, steps: int, trials: int, warmup: int, stn: DeltaSTN, compiled: dict) -> dict:
    data = load_splits(seed)
    results = {}

    def record(name, params, extra=None):
        val, val_acc = evaluate(stn.model, params, data["val"])
        test, test_acc = evaluate(stn.model, params, data["test"])
        results[name] = {"val_loss": val, "val_acc": val_acc, "test_loss": test, "test_acc": test_acc, **(extra or {})}

    record("fixed", train_fixed(stn, data, None, steps, seed, compiled["general"]), SPACE.values(SPACE.init_u()))

    draws = np.random.default_rng(seed + 1)
    best = None  # trials = 0 skips random search (the short test schedule)
    for trial in range(trials):
        values = {h.name: float(draws.uniform(h.low, h.high)) for h in SPACE.hypers}
        values = {k: min(max(v, 1e-3), 0.949) if k.startswith("dropout") else max(v, 1e-3) for k, v in values.items()}
        params = train_fixed(
            stn, data, SPACE.unconstrain(values), steps // trials, seed + 10 * trial, compiled["general"]
        )
        val = evaluate(stn.model, params, data["val"])[0]
        if best is None or val < best[0]:
            best = (val, params, values)
    if best is not None:
        record("random search", best[1], best[2])

    state = init_state(stn, data, seed)
    state = fit(stn, state, batches(data["train"], seed), batches(data["val"], seed + 7), steps, compiled["stn"])
    record("delta-stn", state.params, {**stn.hparams(state), "hyper_steps": int(state.hyper_step)})
    return results


def summarise(per_seed: list[dict]) -> dict:
    out = {}
    for method in per_seed[0]:
        rows = [r[method] for r in per_seed]
        out[method] = {
            key: {"mean": float(np.mean([r[key] for r in rows])), "std": float(np.std([r[key] for r in rows]))}
            for key in rows[0]
        }
    return out


def table(summary: dict) -> str:
    cols = ("val_loss", "val_acc", "test_loss", "test_acc")
    lines = [f"{'method':15s}" + "".join(f"{c:>18s}" for c in cols)]
    for method, stats in summary.items():
        cells = "".join(f"{stats[c]['mean']:>10.4f} +-{stats[c]['std']:6.4f}" for c in cols)
        lines.append(f"{method:15s}{cells}")
    lines.append("final hyperparameters (mean over seeds):")
    for method, stats in summary.items():
        hp = ", ".join(f"{name}={stats[name]['mean']:.3f}" for name in SPACE.names)
        lines.append(f"  {method:15s} {hp}")
    return "\n".join(lines)


def run(seeds=(0, 1, 2), steps: int = 3000, trials: int = 8, warmup: int | None = None) -> dict:
    start = time.perf_counter()
    warmup = steps // 10 if warmup is None else warmup
    stn = build(warmup)
    compiled = {"general": _general_only(stn), "stn": jit_steps(stn)}
    per_seed = [run_seed(seed, steps, trials, warmup, stn, compiled) for seed in seeds]
    summary = summarise(per_seed)
    return {
        "summary": summary,
        "per_seed": per_seed,
        "steps": steps,
        "trials": trials,
        "warmup": warmup,
        "seconds": time.perf_counter() - start,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000, help="weight updates per method")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=8, help="random-search settings")
    parser.add_argument("--warmup", type=int, default=None, help="default: steps / 10")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(tuple(args.seeds), args.steps, args.trials, args.warmup)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(table(result["summary"]))
        print(f"{len(args.seeds)} seeds, {args.steps} weight steps per method, {result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
