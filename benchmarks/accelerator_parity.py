"""The accelerator computes what the CPU computes: generator forward and one real train step, both dtypes.

    python benchmarks/accelerator_parity.py [--batch 4] [--stage gan] [--json]

Runs on the default backend (GPU / TPU) and on the host CPU in one process, from the same initial state and batch,
and prints relative errors ``|x - x_cpu| / |x_cpu|`` against the CPU float32 result: the generator's SR image
(eval mode), and after one train step (SGD, so the update is the scaled gradient) the losses and the whole
generator update. Exits 1 on a non-finite value, or when the SR image or g_loss is off by more than 5e-2 (the
update is reported, not judged: bfloat16 backward passes through BN and D are far noisier than the forward).
On a CPU-only machine there is nothing to compare and it says so.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

ERROR_LIMIT = 5e-2


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def one_step(stage: str, dtype: str, batch: int, device) -> dict:
    """Generator output and one train step of the standard method, everything placed on ``device``."""
    from jsr import data as jdata
    from jsr.config import base_config
    from jsr.train import build_generator, build_standard

    c = base_config()
    c.stage, c.compute_dtype, c.batch_size = stage, dtype, batch
    c.data.augment.enabled = False
    c.loss.allow_random_vgg = True
    c.model.conv = "xla"  # the same formulation on both backends
    c.optim.g.name = c.optim.d.name = "sgd"  # an update proportional to the gradient (Adam's first step is ~sign)
    generator = build_generator(c)
    parts = build_standard(c, generator)
    rng = np.random.default_rng(0)
    hr_side = 4 * c.data.patch_size
    host_batch = {
        "hr": rng.integers(0, 256, (batch, hr_side, hr_side, 3), dtype=np.uint8),
        "lr": rng.integers(0, 256, (batch, c.data.patch_size, c.data.patch_size, 3), dtype=np.uint8),
    }
    with jax.default_device(device):
        state = jax.device_put(parts.state, device)
        before = flat(jax.device_get(state.g_params))
        variables = {"params": state.g_params, "batch_stats": state.g_batch_stats}
        lr = jnp.asarray(host_batch["lr"], jnp.float32) / 127.5 - 1.0
        sr = jax.jit(lambda v, x: generator.apply(v, x))(variables, jax.device_put(lr, device))
        sr = np.asarray(sr)
        new_state, metrics = parts.train_step(
            state,
            jax.device_put(host_batch, device),
            jax.device_put(jdata.augment_params(c.data.augment, batch), device),
            jax.device_put(parts.frozen, device),
        )
        after = flat(jax.device_get(new_state.g_params))
    return {"sr": sr, "update": after - before, "metrics": {k: float(v) for k, v in metrics.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--stage", default="gan", choices=["mse", "gan"])
    p.add_argument("--json", action="store_true", help="print one JSON line at the end")
    args = p.parse_args(argv)
    accel = jax.devices()[0]
    if accel.platform == "cpu":
        print("only a CPU here: nothing to compare")
        return 0
    cpu = jax.devices("cpu")[0]
    ref = one_step(args.stage, "float32", args.batch, cpu)
    rows, worst = {}, 0.0
    for dtype in ("float32", "bfloat16"):
        got = one_step(args.stage, dtype, args.batch, accel)
        row = {"sr": rel(got["sr"], ref["sr"]), "g_update": rel(got["update"], ref["update"])}
        row |= {f"loss_{k}": rel(v, ref["metrics"][k]) for k, v in got["metrics"].items() if k in ref["metrics"]}
        finite = all(np.isfinite(v) for v in row.values()) and np.all(np.isfinite(got["sr"]))
        rows[dtype] = row | {"finite": bool(finite)}
        worst = max(worst, *(v for k, v in row.items() if k in ("sr", "loss_g_loss")), 0.0 if finite else np.inf)
        print(f"{accel.device_kind} {dtype} vs CPU float32: " + ", ".join(f"{k} {v:.2e}" for k, v in row.items()))
    if args.json:
        print(json.dumps({"device": accel.device_kind, "stage": args.stage, "batch": args.batch, "rel_errors": rows}))
    return 0 if worst <= ERROR_LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
