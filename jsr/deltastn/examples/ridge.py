"""Delta-STN on ridge regression, where everything has a closed form: ``python -m jsr.deltastn.examples.ridge --json``.

Training loss L_T(w) = ||X w - y||^2 + lambda ||w||^2 with X, y the (centred) training data divided by sqrt(N), so
||X w - y||^2 is the training MSE; validation loss L_V(w) = MSE on held-out data. The model is one ``nn.Dense(1,
use_bias=False)``; lambda itself (identity, the "unbounded" kind) is the one hyperparameter, so the structured
response's kernel part V[0, 0] * R is a learned dw/dlambda, which the response objective makes (Bae & Grosse 2020)
exactly dw*/dlambda = -(X^T X + lambda I)^{-1} w*(lambda), for any sigma.

Two phases of one run:
1. warm-up (weight steps only, lambda fixed at its initial value, where dL_V/dlambda is far from 0): then the learned
   Jacobian is compared with the closed form (``jacobian_rel_error``) and the Delta-STN hypergradient at e = 0 with
   the exact dL_V/dlambda (``hypergrad_rel_error``). At the optimum the hypergradient is ~0 and a relative error
   there would measure noise, hence the check at the end of warm-up.
2. the schedule (K weight steps : 1 hyper step) tunes lambda; ``lambda_final`` and the trained model's validation
   loss are compared with the best of a dense grid of closed-form solutions. ``jacobian_rel_error_final`` repeats
   the Jacobian check at lambda_final.

The references are float64 numpy closed forms, independent of the code under test.
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


def make_data(seed: int = 0, dim: int = 20, n_train: int = 40, n_val: int = 400, noise: float = 1.0) -> dict:
    """Gaussian features, a weak true signal and unit noise: few samples per weight, so the best lambda is interior.

    Features and targets are centred with the TRAINING means, so the bias-free model is the right model.
    """
    rng = np.random.default_rng(seed)
    w_true = 0.3 * rng.standard_normal(dim)

    def draw(n):
        x = rng.standard_normal((n, dim))
        return x, x @ w_true + noise * rng.standard_normal(n)

    x, y = draw(n_train)
    xv, yv = draw(n_val)
    mx, my = x.mean(0), y.mean()
    return {"x": x - mx, "y": y - my, "x_val": xv - mx, "y_val": yv - my}


class ClosedForm:
    """float64 reference: w*(lambda), dw*/dlambda, L_V and dL_V/dlambda (L_T as in the module docstring)."""

    def __init__(self, data: dict):
        n = len(data["y"])
        self.a = data["x"].T @ data["x"] / n  # X^T X with X = x / sqrt(N)
        self.b = data["x"].T @ data["y"] / n
        self.xv, self.yv = data["x_val"], data["y_val"]

    def w(self, lam: float) -> np.ndarray:
        return np.linalg.solve(self.a + lam * np.eye(len(self.b)), self.b)

    def jacobian(self, lam: float) -> np.ndarray:
        return -np.linalg.solve(self.a + lam * np.eye(len(self.b)), self.w(lam))

    def val_loss(self, w: np.ndarray) -> float:
        return float(np.mean(np.square(self.xv @ w - self.yv)))

    def val_grad(self, lam: float) -> float:
        residual = self.xv @ self.w(lam) - self.yv
        return float(2.0 * np.mean(residual * (self.xv @ self.jacobian(lam))))

    def grid(self, low: float = 1e-4, high: float = 1e2, points: int = 4001) -> tuple[float, float]:
        lams = np.geomspace(low, high, points)
        losses = [self.val_loss(self.w(lam)) for lam in lams]
        best = int(np.argmin(losses))
        return float(lams[best]), float(losses[best])


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1, use_bias=False, name="linear")(x)[:, 0]


def train_loss(net, batch, hp, rng):
    """Per example: squared error + lambda_i ||w_i||^2 (w_i: example i's effective weights); mean = L_T."""
    del rng
    return jnp.square(net(batch["x"]) - batch["y"]) + hp["lambda"] * net.weight_sq_norm()


def val_loss(net, batch, rng):
    del rng
    return jnp.square(net(batch["x"]) - batch["y"])


def build(lam_init: float, warmup: int, hyper_lr: float) -> DeltaSTN:
    space = HyperSpace([Hyper("lambda", init=lam_init, kind="unbounded")])
    return DeltaSTN(
        Linear(),
        space,
        train_loss,
        val_loss,
        general_optimizer=optax.sgd(0.1, momentum=0.9),
        # decays over warm-up to a floor that still tracks lambda: the response objective is stochastic in e
        response_optimizer=optax.sgd(optax.cosine_decay_schedule(0.05, warmup, 0.05), momentum=0.9),
        hyper_optimizer=optax.rmsprop(hyper_lr, decay=0.99),
        scale_optimizer=optax.rmsprop(1e-2, decay=0.99),
        warmup_steps=warmup,
    )


def learned_jacobian(state) -> np.ndarray:
    """dw/dlambda of the response: the kernel part of V's row times R (one output unit)."""
    leaf = state.response["linear"]
    return np.asarray(leaf["V"][0, 0] * leaf["R"][:, 0], np.float64)


def rel_error(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))


def run(
    seed: int = 0,
    lam_init: float = 1.0,
    warmup: int = 2500,
    steps: int = 5000,
    repeats: int = 20,
    hyper_lr: float = 1e-2,
) -> dict:
    """``repeats``: copies of the training set in each (full) batch, each copy with its own perturbations; the
    loss is unchanged, the response objective's Monte-Carlo noise over e shrinks by sqrt(repeats)."""
    start = time.perf_counter()
    data = make_data(seed)
    ref = ClosedForm(data)
    train = {
        "x": jnp.asarray(np.tile(data["x"], (repeats, 1)), jnp.float32),
        "y": jnp.asarray(np.tile(data["y"], repeats), jnp.float32),
    }
    val = {"x": jnp.asarray(data["x_val"], jnp.float32), "y": jnp.asarray(data["y_val"], jnp.float32)}
    stn = build(lam_init, warmup, hyper_lr)
    model_vars = stn.model.init(jax.random.PRNGKey(seed), train["x"])
    state = stn.init(jax.random.PRNGKey(seed + 1), model_vars, train["x"])
    jitted = jit_steps(stn)
    forever = lambda batch: iter(lambda: batch, None)  # noqa: E731  full-batch: the same batch every step

    state = fit(stn, state, forever(train), forever(val), warmup, jitted)
    lam0 = stn.hparams(state)["lambda"]
    jacobian_error = rel_error(learned_jacobian(state), ref.jacobian(lam0))
    hypergrad = float(jax.jit(stn.hypergradient)(state, val)[0])
    hypergrad_error = abs(hypergrad - ref.val_grad(lam0)) / abs(ref.val_grad(lam0))

    state = fit(stn, state, forever(train), forever(val), steps, jitted)
    lam = stn.hparams(state)["lambda"]
    lam_best, loss_best = ref.grid()
    w_final = np.asarray(state.params["linear"]["kernel"][:, 0], np.float64)
    return {
        "jacobian_rel_error": jacobian_error,
        "hypergrad_rel_error": hypergrad_error,
        "hypergrad": hypergrad,
        "hypergrad_exact": ref.val_grad(lam0),
        "lambda_checked": lam0,
        "lambda_init": lam_init,
        "lambda_final": lam,
        "lambda_best_grid": lam_best,
        "val_loss_final": ref.val_loss(w_final),
        "val_loss_closed_form_at_lambda_final": ref.val_loss(ref.w(lam)),
        "val_loss_best_grid": loss_best,
        "val_loss_rel_gap": ref.val_loss(w_final) / loss_best - 1.0,
        "jacobian_rel_error_final": rel_error(learned_jacobian(state), ref.jacobian(lam)),
        "sigma_final": stn.sigmas(state)["lambda"],
        "weight_steps": int(state.step),
        "hyper_steps": int(state.hyper_step),
        "seconds": time.perf_counter() - start,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object (default: one line per key)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lambda_init", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=2500)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    result = run(args.seed, args.lambda_init, args.warmup, args.steps, args.repeats)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for key, value in result.items():
            print(f"{key:40s} {value}")
    return result


if __name__ == "__main__":
    main()
