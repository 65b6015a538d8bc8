"""PyTorch state_dict -> Flax variables by a table of targets: one ``Target`` per torch tensor (numpy only)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

IGNORED_SUFFIXES = (".num_batches_tracked",)


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one torch tensor goes: collection ('params' / 'batch_stats'), Flax path, expected torch shape."""

    collection: str
    path: tuple[str, ...]
    shape: tuple[int, ...]
    transform: Callable[[np.ndarray], np.ndarray] = lambda a: a


def oihw_to_hwio(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(2, 3, 1, 0))


def conv(torch_prefix: str, flax_path: tuple[str, ...], cin: int, cout: int, k: int, bias=True) -> dict[str, Target]:
    out = {f"{torch_prefix}.weight": Target("params", (*flax_path, "kernel"), (cout, cin, k, k), oihw_to_hwio)}
    if bias:
        out[f"{torch_prefix}.bias"] = Target("params", (*flax_path, "bias"), (cout,))
    return out


def batch_norm(torch_prefix: str, flax_path: tuple[str, ...], c: int) -> dict[str, Target]:
    return {
        f"{torch_prefix}.weight": Target("params", (*flax_path, "scale"), (c,)),
        f"{torch_prefix}.bias": Target("params", (*flax_path, "bias"), (c,)),
        f"{torch_prefix}.running_mean": Target("batch_stats", (*flax_path, "mean"), (c,)),
        f"{torch_prefix}.running_var": Target("batch_stats", (*flax_path, "var"), (c,)),
    }


def scalar_prelu(torch_key: str, flax_path: tuple[str, ...]) -> dict[str, Target]:
    """nn.PReLU() (one slope) -> flax nn.PReLU's scalar ``negative_slope``."""
    return {torch_key: Target("params", (*flax_path, "negative_slope"), (1,), lambda a: a.reshape(()))}


def linear(
    torch_prefix: str, flax_name: str, fin: int, fout: int, transform: Callable[[np.ndarray], np.ndarray] = np.transpose
) -> dict[str, Target]:
    return {
        f"{torch_prefix}.weight": Target(
            "params", (flax_name, "kernel"), (fout, fin), lambda a: np.ascontiguousarray(transform(a))
        ),
        f"{torch_prefix}.bias": Target("params", (flax_name, "bias"), (fout,)),
    }


def build_variables(
    state: Mapping[str, np.ndarray], targets: Mapping[str, Target], ignored: Callable[[str], bool] = lambda k: False
) -> dict:
    """Variables from ``state`` by ``targets``; ValueError listing missing / unexpected keys and wrong shapes."""
    skip = lambda key: key.endswith(IGNORED_SUFFIXES) or ignored(key)  # noqa: E731
    missing = [k for k in targets if k not in state]
    unexpected = [k for k in state if k not in targets and not skip(k)]
    lines = [f"  missing key: {k} (expected shape {targets[k].shape})" for k in missing[:20]]
    lines += [f"  unexpected key: {k} (shape {tuple(state[k].shape)})" for k in unexpected[:20]]
    hidden = max(len(missing) - 20, 0) + max(len(unexpected) - 20, 0)
    lines += [f"  ... and {hidden} more"] if hidden else []
    lines += [
        f"  {k}: checkpoint has {tuple(state[k].shape)}, expected {t.shape}"
        for k, t in targets.items()
        if k in state and tuple(state[k].shape) != t.shape
    ]
    if lines:
        raise ValueError("\n".join(lines))
    variables: dict[str, dict] = {}
    for key, target in targets.items():
        tree = variables.setdefault(target.collection, {})
        for name in target.path[:-1]:
            tree = tree.setdefault(name, {})
        tree[target.path[-1]] = np.asarray(target.transform(np.asarray(state[key], np.float32)), dtype=np.float32)
    return variables


def from_targets(
    targets: Callable[..., Mapping[str, Target]], ignored: Callable[[str], bool] = lambda k: False
) -> Callable[[Mapping[str, np.ndarray], dict], dict]:
    """An architecture's ``to_flax`` from its table: ``targets(**config)``."""
    return lambda state, config: build_variables(state, targets(**config), ignored)
