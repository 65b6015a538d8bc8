"""What BatchNorm + PReLU cost in the SRResNet train step, and what fusing them saves (float32, CPU).

    python benchmarks/bn_prelu.py [--pairs 15] [--conv fast] [--json out.json]

The real train step (``benchmarks/run.py``'s train_mse: SRResNet 16x64, batch 16, LR 24, MSE, Adam) built three ways,
all compiled in this one process and timed alternately (per-pair ratios are robust to the machine's drift):
- ``flax``: jsr's residual block, conv -> BatchNorm -> PReLU -> conv -> BatchNorm (+ identity);
- ``fused``: the first BatchNorm and the PReLU as one ``jax.custom_vjp`` op whose forward is one statistics pass and
  one normalise-and-activate pass, and whose backward is one pass of the three sums (bias, scale, slope) and one
  pass for the input gradient (the normalised values recomputed, not stored); same parameters, same names;
- ``none``: the blocks without BatchNorm and PReLU: the most any fusion of them could save.
``fused`` is checked against ``flax`` first (output, batch statistics and parameter gradient in train mode).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jsr.models import srresnet


def _load_benchmark(name: str):
    """benchmarks/NAME.py loaded by path: no sys.path entry that would shadow the tests' modules of the same names
    (torch_reference) in a pytest process."""
    spec = importlib.util.spec_from_file_location(
        f"jsr_benchmarks_{name}", Path(__file__).resolve().parent / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark("run")  # the train step and its batch
alternate = _load_benchmark("winograd").alternate  # the alternating timer

AXES = (0, 1, 2)


def _forward(x, scale, bias, slope):
    mean = x.mean(AXES)
    var = jnp.maximum((x * x).mean(AXES) - mean * mean, 0.0)  # flax's fast variance
    inv = jax.lax.rsqrt(var + srresnet.BN_EPSILON)
    y = (x - mean) * (inv * scale) + bias
    return (jnp.where(y >= 0, y, slope * y), mean, var), (x, mean, inv, scale, bias, slope)


def _backward(residuals, grads):
    x, mean, inv, scale, bias, slope = residuals
    dz = grads[0]  # the batch statistics leave only through the running averages (no gradient)
    xhat = (x - mean) * inv
    y = xhat * scale + bias
    negative = y < 0
    dy = jnp.where(negative, slope * dz, dz)
    dslope = jnp.sum(jnp.where(negative, dz * y, 0.0)).reshape(slope.shape)
    dbias, dscale = dy.sum(AXES), (dy * xhat).sum(AXES)
    count = x.shape[0] * x.shape[1] * x.shape[2]
    dx = (scale * inv) * (dy - dbias / count - xhat * (dscale / count))
    return dx, dscale, dbias, dslope


@jax.custom_vjp
def batch_norm_prelu(x, scale, bias, slope):
    """(PReLU(BatchNorm(x)), batch mean, batch variance) in train mode."""
    return _forward(x, scale, bias, slope)[0]


batch_norm_prelu.defvjp(_forward, _backward)


class _BatchNormVariables(nn.Module):
    """flax.linen.BatchNorm's variables under its names, for the fused op."""

    @nn.compact
    def __call__(self, channels: int):
        scale = self.param("scale", nn.initializers.ones, (channels,))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,)))
        var = self.variable("batch_stats", "var", lambda: jnp.ones((channels,)))
        return scale, bias, mean, var


class _PReLUVariables(nn.Module):
    @nn.compact
    def __call__(self):
        return self.param("negative_slope", nn.initializers.constant(srresnet.PRELU_INIT), ())


class FusedBlock(srresnet.ResidualBlock):
    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        bn = dict(use_running_average=not train, momentum=srresnet.BN_MOMENTUM, epsilon=srresnet.BN_EPSILON)
        y = srresnet._MaskedConv(self.n_feats, 3, self.dtype, self.conv, name="conv1")(x, mask)
        scale, bias, running_mean, running_var = _BatchNormVariables(name="bn1")(self.n_feats)
        slope = _PReLUVariables(name="prelu")()
        y, mean, var = batch_norm_prelu(y, scale, bias, slope)
        if train and not self.is_initializing():
            m = srresnet.BN_MOMENTUM
            running_mean.value = m * running_mean.value + (1 - m) * mean
            running_var.value = m * running_var.value + (1 - m) * var
        y = srresnet._MaskedConv(self.n_feats, 3, self.dtype, self.conv, name="conv2")(y, mask)
        return x + nn.BatchNorm(name="bn2", **bn)(y)


class NoNormBlock(srresnet.ResidualBlock):
    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        y = srresnet._MaskedConv(self.n_feats, 3, self.dtype, self.conv, name="conv1")(x, mask)
        return x + srresnet._MaskedConv(self.n_feats, 3, self.dtype, self.conv, name="conv2")(y, mask)


@contextlib.contextmanager
def residual_block(block):
    """SRResNet built with ``block`` as its residual block inside the ``with`` (the generator looks it up when
    traced)."""
    original, srresnet.ResidualBlock = srresnet.ResidualBlock, block
    try:
        yield
    finally:
        srresnet.ResidualBlock = original


def build(block, args):
    """The compiled train step with ``block`` as the residual block."""
    with residual_block(block):
        return bench.jsr_train("train_mse", args)[0]


def fused_error(args) -> dict:
    """``fused`` against ``flax`` on the same variables and batch, in train mode: the output, the new batch
    statistics and the gradient of an MSE loss, each as max |difference| / max |flax's value|, the worst leaf."""
    from jsr.train import build_generator

    generator = build_generator(bench.jsr_config("train_mse", args))
    rng = np.random.default_rng(0)
    lr = jnp.asarray(rng.uniform(-1, 1, (args.batch, args.patch, args.patch, 3)), jnp.float32)
    target = jnp.asarray(rng.uniform(-1, 1, (args.batch, 4 * args.patch, 4 * args.patch, 3)), jnp.float32)
    variables = generator.init(jax.random.PRNGKey(0), lr[:1])
    results = []

    def loss(params):
        v = {"params": params, "batch_stats": variables["batch_stats"]}
        sr, updates = generator.apply(v, lr, train=True, mutable=["batch_stats"])
        return jnp.mean((sr - target) ** 2), (sr, updates["batch_stats"])

    for block in (srresnet.ResidualBlock, FusedBlock):
        with residual_block(block):  # a fresh jit per block: each traces the generator with its own block
            grads, (sr, stats) = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
        results.append({"output": sr, "batch_stats": stats, "gradient": grads})

    def relative(a, b):
        pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
        # a floor at 1e-3 of the largest entry: the biases of convs before a BatchNorm have a gradient of 0 + rounding
        floor = 1e-3 * max(float(np.max(np.abs(x))) for x, _ in pairs)
        return max(float(np.max(np.abs(x - y))) / max(float(np.max(np.abs(x))), floor) for x, y in pairs)

    return {name: relative(results[0][name], results[1][name]) for name in results[0]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=15)
    p.add_argument("--conv", default="fast", choices=["xla", "fast", "winograd"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=24)
    p.add_argument("--n_feats", type=int, default=64)
    p.add_argument("--num_blocks", type=int, default=16)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    shape = ["--batch", str(args.batch), "--patch", str(args.patch), "--n_feats", str(args.n_feats)]
    step_args = bench.parse_args(["--no-torch", "--conv", args.conv, *shape, "--num_blocks", str(args.num_blocks)])
    error = fused_error(step_args)
    steps = {name: build(block, step_args) for name, block in (("flax", srresnet.ResidualBlock), ("fused", FusedBlock))}
    steps["none"] = build(NoNormBlock, step_args)
    times = alternate(steps, (), args.pairs, warmup=1)
    report = {
        "machine": bench.machine_name(),
        "jax": jax.__version__,
        "conv": args.conv,
        "shape": {"batch": args.batch, "patch": args.patch, "n_feats": args.n_feats, "num_blocks": args.num_blocks},
        "median_ms": {name: 1000 * statistics.median(t) for name, t in times.items()},
        "median_ratio_vs_flax": {
            name: statistics.median(a / b for a, b in zip(t, times["flax"], strict=True)) for name, t in times.items()
        },
        "fused_relative_error": error,
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
