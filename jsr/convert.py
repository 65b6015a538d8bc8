"""Conversion of SRGAN-PyTorch / torchvision state_dicts into jsr's Flax variables.

Reading is safe by construction: ``.pt``/``.pth`` go through ``torch.load(weights_only=True)`` (zip and
legacy formats), which refuses any pickle that would call a function; ``.safetensors`` holds no code at all.
The mapping itself is numpy only. Every mismatch is reported with the key and both shapes, and nothing is
written unless the whole conversion succeeded (``jsr.checkpoints.save_model`` is atomic).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jsr.errors import UserError, run_cli

WRAPPER_KEYS = ("state_dict", "model", "generator", "discriminator", "params")
IGNORED_SUFFIXES = (".num_batches_tracked",)


class ConversionError(UserError):
    """The input cannot be converted; the message says which file / key and what to do."""


# ---------------------------------------------------------------------------------------------- reading


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a checkpoint file as float32/int numpy arrays, unwrapped and without a ``module.`` prefix."""
    path = Path(path)
    if path.is_dir():
        raise ConversionError(f"{path} is a folder; --input takes one checkpoint file (.pt, .pth or .safetensors)")
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        raw = _read_safetensors(path)
    else:
        raw = _read_torch(path)
    return _unwrap(raw, path)


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for headers and sizes
        raise ConversionError(f"{path}: not a valid .safetensors file ({e})") from e


def _read_torch(path: Path) -> dict[str, Any]:
    try:
        import torch
    except ImportError as e:
        raise ConversionError(
            f"{path}: reading .pt/.pth files needs PyTorch; install the extra with `pip install 'jsr[convert]'` "
            "(or convert the file to .safetensors elsewhere)"
        ) from e
    import pickle

    if path.stat().st_size == 0:
        raise ConversionError(f"{path}: not a PyTorch checkpoint (the file is empty)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol-version chatter from old files
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(e))
        if blocked:
            raise ConversionError(
                f"{path}: refused to load: the pickle would call {blocked.group(1)}, i.e. run code. "
                "Nothing was executed. Only plain tensor checkpoints (state_dicts) are accepted."
            ) from None
        raise ConversionError(f"{path}: not a PyTorch checkpoint (the pickle holds more than tensors)") from None
    except Exception as e:
        raise ConversionError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {e})") from None
    return obj


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    # torch tensors: bfloat16/half have no numpy twin we want; upcast floats to float32 first.
    if value.is_floating_point():
        value = value.float()
    return value.detach().cpu().numpy()


def _is_tensor(value: Any) -> bool:
    return isinstance(value, np.ndarray) or type(value).__name__ in ("Tensor", "Parameter")


def _unwrap(obj: Any, path: Path) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f"{path}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}"
        )
    for key in WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], Mapping) and not _is_tensor(obj[key]):
            obj = obj[key]
            break
    state = {}
    for key, value in obj.items():
        if not _is_tensor(value):
            raise ConversionError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a bare state_dict "
                f"or a dict wrapping one under one of {list(WRAPPER_KEYS)}"
            )
        state[str(key)] = _to_numpy(value)
    if not state:
        raise ConversionError(f"{path}: the checkpoint holds no tensors")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


# ---------------------------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class Target:
    """Where one torch tensor goes: collection ('params' / 'batch_stats'), Flax path, expected torch shape."""

    collection: str
    path: tuple[str, ...]
    shape: tuple[int, ...]
    transform: Callable[[np.ndarray], np.ndarray] = lambda a: a


def _conv(torch_prefix: str, flax_path: tuple[str, ...], cin: int, cout: int, k: int) -> dict[str, Target]:
    return {
        f"{torch_prefix}.weight": Target("params", (*flax_path, "kernel"), (cout, cin, k, k), _oihw_to_hwio),
        f"{torch_prefix}.bias": Target("params", (*flax_path, "bias"), (cout,)),
    }


def _oihw_to_hwio(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(2, 3, 1, 0))


def _bn(torch_prefix: str, flax_path: tuple[str, ...], c: int) -> dict[str, Target]:
    return {
        f"{torch_prefix}.weight": Target("params", (*flax_path, "scale"), (c,)),
        f"{torch_prefix}.bias": Target("params", (*flax_path, "bias"), (c,)),
        f"{torch_prefix}.running_mean": Target("batch_stats", (*flax_path, "mean"), (c,)),
        f"{torch_prefix}.running_var": Target("batch_stats", (*flax_path, "var"), (c,)),
    }


def _prelu(torch_key: str, flax_path: tuple[str, ...]) -> dict[str, Target]:
    # The source shares ONE PReLU (a default-argument bug), so its scalar appears under every key; each key
    # still maps to its own layer here, which loads shared and per-layer checkpoints alike.
    return {torch_key: Target("params", (*flax_path, "negative_slope"), (1,), lambda a: a.reshape(()))}


def _linear(
    torch_prefix: str, flax_name: str, fin: int, fout: int, transform: Callable[[np.ndarray], np.ndarray] = np.transpose
) -> dict[str, Target]:
    return {
        f"{torch_prefix}.weight": Target(
            "params", (flax_name, "kernel"), (fout, fin), lambda a: np.ascontiguousarray(transform(a))
        ),
        f"{torch_prefix}.bias": Target("params", (flax_name, "bias"), (fout,)),
    }


def generator_targets(n_feats: int, num_blocks: int, scale: int, channels: int) -> dict[str, Target]:
    from jsr.models.srresnet import upsample_factors

    f = n_feats
    t = {}
    t |= _conv("conv01.body.0", ("conv01", "conv"), channels, f, 9)
    t |= _prelu("conv01.body.1.weight", ("conv01_prelu",))
    for i in range(num_blocks):
        p = f"body.{i}.body"
        t |= _conv(f"{p}.0.body.0", (f"body_{i}", "conv1", "conv"), f, f, 3)
        t |= _bn(f"{p}.0.body.1", (f"body_{i}", "bn1"), f)
        t |= _prelu(f"{p}.0.body.2.weight", (f"body_{i}", "prelu"))
        t |= _conv(f"{p}.1.body.0", (f"body_{i}", "conv2", "conv"), f, f, 3)
        t |= _bn(f"{p}.1.body.1", (f"body_{i}", "bn2"), f)
    t |= _conv("conv02.body.0", ("conv02", "conv"), f, f, 3)
    t |= _bn("conv02.body.1", ("conv02_bn",), f)
    for j, r in enumerate(upsample_factors(scale)):
        t |= _conv(f"tail.{j}.body.0.body.0", (f"tail_{j}", "conv"), f, f * r * r, 3)
        t |= _prelu(f"tail.{j}.body.2.weight", (f"tail_{j}_prelu",))
    t |= _conv("last_conv.body.0", ("last_conv", "conv"), f, channels, 3)
    return t


def discriminator_targets(patch_size: int, n_feats: int, channels: int = 3) -> dict[str, Target]:
    from jsr.models.discriminator import NUM_DOWN_BLOCKS, head_size

    f = n_feats
    t = {}
    t |= _conv("conv01.body.0", ("conv01",), channels, f, 3)
    t |= _conv("conv02.body.0", ("conv02",), f, f, 3)
    cin = f
    for i in range(NUM_DOWN_BLOCKS):
        cout = f * 2 ** (i + 1)
        t |= _conv(f"body.{i}.body.0.body.0", (f"body_{i}_conv1",), cin, cout, 3)
        t |= _bn(f"body.{i}.body.0.body.1", (f"body_{i}_bn1",), cout)
        t |= _conv(f"body.{i}.body.1.body.0", (f"body_{i}_conv2",), cout, cout, 3)
        t |= _bn(f"body.{i}.body.1.body.1", (f"body_{i}_bn2",), cout)
        cin = cout
    s = head_size(patch_size)

    def chw_to_hwc(a: np.ndarray) -> np.ndarray:
        # torch flattens (C, H, W); the Flax module flattens NHWC as (H, W, C).
        return a.reshape(a.shape[0], cin, s, s).transpose(2, 3, 1, 0).reshape(s * s * cin, a.shape[0])

    t |= _linear("tail.0", "tail_0", s * s * cin, 1024, chw_to_hwc)
    t |= _linear("tail.2", "tail_2", 1024, 1)
    return t


def vgg19_targets() -> dict[str, Target]:
    from jsr.models.vgg import VGG19_BLOCKS, VGG19_TAPS, torchvision_index

    t = {}
    cin = 3
    for tap in VGG19_TAPS:
        b = int(tap[4]) - 1
        cout = VGG19_BLOCKS[b][1]
        t |= _conv(f"features.{torchvision_index(tap)}", (tap.replace("relu", "conv"),), cin, cout, 3)
        cin = cout
    return t


# ------------------------------------------------------------------------------------ architecture inference


def guess_kind(state: Mapping[str, np.ndarray]) -> str | None:
    keys = set(state)
    if "features.0.weight" in keys:
        return "vgg19"
    if "conv01.body.0.weight" in keys and any(k.startswith("last_conv.") for k in keys):
        return "generator"
    if "conv01.body.0.weight" in keys and "tail.0.weight" in keys:
        return "discriminator"
    return None


SIGNATURE_KEYS = {
    "generator": "last_conv.body.0.weight",
    "discriminator": "tail.0.weight",
    "vgg19": "features.0.weight",
}


def _check_kind(kind: str, state: Mapping[str, np.ndarray], path: Path) -> None:
    """Refuse a checkpoint of another model up front: one line instead of a list of missing keys."""
    guessed = guess_kind(state)
    if kind in SIGNATURE_KEYS and guessed not in (None, kind):
        raise ConversionError(
            f"{path}: this looks like a {guessed} checkpoint: use --model {guessed} "
            f"(a {kind} checkpoint has {SIGNATURE_KEYS[kind]!r})"
        )


def _require(state: Mapping[str, np.ndarray], key: str, ndim: int, kind: str, path: Path) -> np.ndarray:
    if key not in state:
        guessed = guess_kind(state)
        hint = f"; it looks like a {guessed} checkpoint: use --model {guessed}" if guessed and guessed != kind else ""
        raise ConversionError(f"{path}: missing key {key!r} expected in a {kind} checkpoint{hint}")
    value = state[key]
    if value.ndim != ndim:
        raise ConversionError(f"{path}: {key!r} has shape {tuple(value.shape)}, expected {ndim} dimensions")
    return value


def infer_config(kind: str, state: Mapping[str, np.ndarray], path: Path) -> dict[str, Any]:
    """Constructor arguments of the jsr module, read off the tensors' shapes."""
    if kind == "generator":
        first = _require(state, "conv01.body.0.weight", 4, kind, path)
        n_feats, channels = int(first.shape[0]), int(first.shape[1])
        blocks = {int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.", k))}
        num_blocks = max(blocks) + 1 if blocks else 0
        tails = sorted(
            {int(m.group(1)) for k in state if (m := re.match(r"tail\.(\d+)\.body\.0\.body\.0\.weight$", k))}
        )
        if not tails:
            raise ConversionError(f"{path}: missing key 'tail.0.body.0.body.0.weight' (the upsampler)")
        outs = [int(state[f"tail.{j}.body.0.body.0.weight"].shape[0]) for j in tails]
        if len(tails) == 2 and outs == [4 * n_feats, 4 * n_feats]:
            scale = 4
        elif len(tails) == 1 and outs[0] % n_feats == 0 and math.isqrt(outs[0] // n_feats) ** 2 == outs[0] // n_feats:
            scale = math.isqrt(outs[0] // n_feats)
            if scale == 4 or scale < 2:
                raise ConversionError(f"{path}: one upsampler of x{scale} is not the SRGAN-PyTorch layout")
        else:
            shapes = {
                f"tail.{j}.body.0.body.0.weight": tuple(state[f"tail.{j}.body.0.body.0.weight"].shape) for j in tails
            }
            raise ConversionError(f"{path}: cannot infer the scale from the upsamplers {shapes} (n_feats={n_feats})")
        return {"n_feats": n_feats, "num_blocks": num_blocks, "scale": scale, "channels": channels}
    if kind == "discriminator":
        first = _require(state, "conv01.body.0.weight", 4, kind, path)
        n_feats = int(first.shape[0])
        head = _require(state, "tail.0.weight", 2, kind, path)
        fin = int(head.shape[1])
        cells = fin // (8 * n_feats)
        side = math.isqrt(cells)
        if cells * 8 * n_feats != fin or side * side != cells:
            raise ConversionError(
                f"{path}: 'tail.0.weight' has shape {tuple(head.shape)}; its input size {fin} is not "
                f"(patch/16)^2 * {8 * n_feats} for any patch size"
            )
        if int(first.shape[1]) != 3:
            raise ConversionError(
                f"{path}: 'conv01.body.0.weight' expects {first.shape[1]} channels; only 3 are supported"
            )
        return {"patch_size": 16 * side, "n_feats": n_feats}
    if kind == "vgg19":
        _require(state, "features.0.weight", 4, kind, path)
        return {}
    raise ConversionError(f"unknown model kind {kind!r}; expected generator, discriminator or vgg19")


def targets_for(kind: str, config: dict[str, Any]) -> dict[str, Target]:
    if kind == "generator":
        return generator_targets(**config)
    if kind == "discriminator":
        return discriminator_targets(**config)
    return vgg19_targets()


def _ignored(kind: str, key: str) -> bool:
    return key.endswith(IGNORED_SUFFIXES) or (kind == "vgg19" and key.startswith("classifier."))


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def convert_state_dict(
    kind: str, state: Mapping[str, np.ndarray], path: Path = Path("<state_dict>")
) -> tuple[dict[str, Any], dict]:
    """``(config, variables)`` for the jsr module of ``kind``; raises ConversionError on any mismatch."""
    _check_kind(kind, state, path)
    config = infer_config(kind, state, path)
    targets = targets_for(kind, config)
    missing = [k for k in targets if k not in state]
    unexpected = [k for k in state if k not in targets and not _ignored(kind, k)]
    if missing or unexpected:
        guessed = guess_kind(state)
        lines = [f"{path}: the tensors do not match a {kind} with {config or 'the torchvision layout'}"]
        if guessed and guessed != kind:
            lines.append(f"  it looks like a {guessed} checkpoint: use --model {guessed}")
        lines += [f"  missing key: {k} (expected shape {targets[k].shape})" for k in missing[:20]]
        lines += [f"  unexpected key: {k} (shape {tuple(state[k].shape)})" for k in unexpected[:20]]
        hidden = max(len(missing) - 20, 0) + max(len(unexpected) - 20, 0)
        if hidden:
            lines.append(f"  ... and {hidden} more")
        raise ConversionError("\n".join(lines))
    wrong = [(k, tuple(state[k].shape), t.shape) for k, t in targets.items() if tuple(state[k].shape) != t.shape]
    if wrong:
        raise ConversionError(
            "\n".join(
                [f"{path}: tensor shapes do not match a {kind} with {config}"]
                + [f"  {k}: checkpoint has {got}, expected {want}" for k, got, want in wrong]
            )
        )
    arrays = _finite_float32(state, list(targets), path)
    variables: dict[str, dict] = {}
    for key, target in targets.items():
        _set(
            variables.setdefault(target.collection, {}),
            target.path,
            np.asarray(target.transform(arrays[key]), dtype=np.float32),
        )
    _check_against_module(kind, config, variables, path)
    return config, variables


def _finite_float32(state: Mapping[str, np.ndarray], keys: list[str], path: Path) -> dict[str, np.ndarray]:
    """float32 copies of ``keys``; integer (quantised) or NaN / inf tensors would convert into a broken model."""
    for key in keys:
        if not np.issubdtype(state[key].dtype, np.floating):
            raise ConversionError(
                f"{path}: {key!r} holds {state[key].dtype} values, not floating point (a quantised or damaged "
                "checkpoint); convert the original float weights"
            )
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, reported below
        arrays = {key: state[key].astype(np.float32) for key in keys}
    bad = {key: int(a.size - np.count_nonzero(np.isfinite(a))) for key, a in arrays.items()}
    bad = {key: n for key, n in bad.items() if n}
    if bad:
        key, n = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise ConversionError(
            f"{path}: {key!r} holds {n} non-finite values (NaN or inf) of {arrays[key].size}{more}; the checkpoint "
            "is damaged or was saved after training diverged: use another checkpoint"
        )
    return arrays


def _check_against_module(kind: str, config: dict[str, Any], variables: dict, path: Path) -> None:
    """The converted tree must have exactly the structure and shapes the Flax module initialises."""
    import jax

    from jsr.checkpoints import abstract_variables, build_model

    expected = jax.tree.map(lambda a: tuple(a.shape), abstract_variables(build_model(kind, config)))
    got = jax.tree.map(lambda a: tuple(a.shape), variables)
    if expected != got:
        raise ConversionError(
            f"{path}: internal error: converted tree differs from the {kind} module's "
            f"parameters\n  expected {expected}\n  got {got}"
        )


# ---------------------------------------------------------------------------------------------- command line


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_file(kind: str, input_path: str | Path, output_dir: str | Path, overwrite: bool = False) -> Path:
    from jsr.checkpoints import ModelFileError, save_model

    input_path = Path(input_path)
    state = read_state_dict(input_path)
    config, variables = convert_state_dict(kind, state, input_path)
    metadata = {"source": {"file": input_path.name, "sha256": sha256(input_path)}}
    try:
        return save_model(output_dir, kind, config, variables, metadata=metadata, overwrite=overwrite)
    except ModelFileError as e:
        raise ConversionError(str(e)) from e


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="convert_torch_weights.py",
        description="Convert SRGAN-PyTorch generator/discriminator or torchvision VGG19 weights to a jsr model "
        "directory (Orbax checkpoint + jsr_model.json).",
    )
    parser.add_argument("--model", required=True, choices=["generator", "discriminator", "vgg19"])
    parser.add_argument("--input", required=True, help=".pt / .pth (zip or legacy torch format) or .safetensors")
    parser.add_argument("--output", required=True, help="model directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    args = parser.parse_args(argv)  # usage errors: argparse's message and exit code 2
    # An output the system refuses (a file in the way, read-only, disk full) is exit 1, the one rule of every jsr
    # command (jsr.errors): the arguments were well-formed, the location is what needs fixing.
    return run_cli(lambda: _convert(args))


def _convert(args: argparse.Namespace) -> int:
    from jsr.checkpoints import read_description

    out = convert_file(args.model, args.input, args.output, overwrite=args.overwrite)
    description = read_description(out)
    print(f"wrote {args.model} {description['config']} ({description['num_params']:,} parameters) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
