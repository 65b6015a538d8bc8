"""How far a bfloat16 training step's gradients are from float32's, parameter by parameter.

    python benchmarks/bf16_gradients.py [--conv onednn] [--json out.json] [--quick]

The SRResNet generator (16 x 64, MSE on random LR 24 -> HR 96, batch 16) and the SRGAN discriminator (mean of its
logits squared, on the HR batch) differentiated once in float32 (conv 'xla') and once with compute_dtype bfloat16
(conv ``--conv``), from the same initial parameters; per parameter the relative error ||g_bf16 - g_f32|| / ||g_f32||.
bfloat16's rounding of activations alone puts every parameter at some error (the kernels' row); a parameter whose
gradient is a bfloat16 SUM sits far above it (before jsr.models.layers: the x2 tail PReLU slopes at 0.47-0.54).
Conv biases followed by BatchNorm have a zero float32 gradient and are left out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jsr.models import Discriminator, Generator

# benchmarks/run.py (the machine's name) loaded by its path: a sys.path entry for benchmarks/ would shadow the tests'
# torch_reference module for the rest of a pytest process
_spec = importlib.util.spec_from_file_location("jsr_benchmarks_run", Path(__file__).resolve().parent / "run.py")
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)


def gradients(model, x, loss_of_output):
    variables = model.init(jax.random.PRNGKey(0), x[:1])

    def loss(params):
        out, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True, mutable=["batch_stats"]
        )
        return loss_of_output(out)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    return {
        jax.tree_util.keystr(path): np.asarray(g, np.float64)
        for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]
    }


def relative_errors(make, x, loss_of_output, conv: str) -> dict[str, float]:
    exact = gradients(make(jnp.float32, "xla"), x, loss_of_output)
    low = gradients(make(jnp.bfloat16, conv), x, loss_of_output)
    errors = {}
    for name, g in exact.items():
        kernel = exact.get(name.replace("['bias']", "['kernel']"))
        if name.endswith("['bias']") and kernel is not None and np.linalg.norm(g) < 1e-4 * np.linalg.norm(kernel):
            continue  # a conv before BatchNorm: its bias's gradient is zero up to rounding
        errors[name] = float(np.linalg.norm(low[name] - g) / np.linalg.norm(g))
    return errors


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conv", default="onednn", help="the bfloat16 run's conv path (jsr.ops.conv)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="a 1-block x 16 generator and 8 examples")
    args = parser.parse_args(argv)
    batch, feats, blocks = (8, 16, 1) if args.quick else (16, 64, 16)
    rng = np.random.default_rng(0)
    lr = jnp.asarray(rng.uniform(-1, 1, (batch, 24, 24, 3)), jnp.float32)
    hr = jnp.asarray(rng.uniform(-1, 1, (batch, 96, 96, 3)), jnp.float32)
    models = {
        "generator": (
            lambda d, c: Generator(n_feats=feats, num_blocks=blocks, dtype=d, conv=c),
            lr,
            lambda out: jnp.mean((out - hr) ** 2),
        ),
        "discriminator": (lambda d, c: Discriminator(dtype=d, conv=c), hr, lambda out: jnp.mean(out**2)),
    }
    result = {
        **run.machine_record(),
        "jax": jax.__version__,
        "conv": args.conv,
        "batch": batch,
        "generator": f"{blocks} x {feats}",
        "relative_error": {},
        "by_kind": {},
    }
    for name, (make, x, loss_of_output) in models.items():
        errors = relative_errors(make, x, loss_of_output, args.conv)
        result["relative_error"][name] = errors
        kinds: dict[str, list[float]] = {}
        for param, err in errors.items():
            leaf = param.rsplit("[", 1)[-1].strip("]'")
            kind = "prelu_slope" if leaf == "negative_slope" else "bn_" + leaf if "bn" in param else leaf
            kinds.setdefault(kind, []).append(err)
        result["by_kind"][name] = {
            k: {"median": float(np.median(v)), "max": max(v), "n": len(v)} for k, v in kinds.items()
        }
        for kind, s in sorted(result["by_kind"][name].items()):
            print(f"{name:14s} {kind:14s} median {s['median']:.4f}  max {s['max']:.4f}  ({s['n']})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
