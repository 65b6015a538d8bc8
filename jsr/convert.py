"""Conversion of PyTorch state_dicts into jsr model directories: the architecture and its constructor arguments are
detected from the tensors' names and shapes (``jsr.archs``), then mapped by that architecture's own table.

Reading is safe by construction and needs no PyTorch: ``.pt``/``.pth`` (zip and legacy formats) go through
``jsr.torch_pickle``, which rebuilds only tensors and containers and refuses any pickle that would call a function;
``.safetensors`` holds no code at all.
The mapping itself is numpy only. Every mismatch is reported with the key and both shapes, and nothing is
written unless the whole conversion succeeded (``jsr.checkpoints.save_model`` is atomic).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jsr import archs
from jsr.archs.mapping import IGNORED_SUFFIXES
from jsr.errors import UserError, run_cli

# params_ema first: Real-ESRGAN files hold both, and its inference loads the EMA weights
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "generator", "discriminator")


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


def _read_torch(path: Path) -> Any:
    """A .pt/.pth file's contents through ``jsr.torch_pickle``: no PyTorch needed, nothing a pickle names is imported
    or called; a pickled nn.Module (old full-module files) yields its state_dict."""
    from jsr.torch_pickle import RefusedPickle, StandIn, TorchPickleError, load, state_dict_of

    try:
        obj = load(path)
    except RefusedPickle as e:
        raise ConversionError(f"{e}. Only plain tensor checkpoints (state_dicts) are accepted.") from None
    except TorchPickleError as e:
        raise ConversionError(str(e)) from None
    if isinstance(obj, StandIn):
        return state_dict_of(obj)
    if isinstance(obj, Mapping):  # {'epoch': ..., 'model': <nn.Module>}: the module's tensors
        return {
            k: state_dict_of(v) if isinstance(v, StandIn) and "_parameters" in vars(v) else v for k, v in obj.items()
        }
    return obj


def _to_numpy(value: np.ndarray) -> np.ndarray:
    # float16 and ml_dtypes' bfloat16 / float8 (numpy kind 'V') are read as float32
    return value.astype(np.float32) if value.dtype == np.float16 or value.dtype.kind == "V" else value


def _is_tensor(value: Any) -> bool:
    return isinstance(value, np.ndarray)  # both readers return numpy arrays, never objects a pickle named


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


# ------------------------------------------------------------------------------------ architecture detection


def _label(arch: archs.Architecture, legacy: bool) -> str:
    """What to pass to --model: the old kind names when the user spoke in them, else the architecture name."""
    if legacy:
        return next((kind for kind, name in archs.LEGACY_KINDS.items() if name == arch.name), arch.name)
    return arch.name


def choose_architecture(
    kind: str | None, state: Mapping[str, np.ndarray], path: Path
) -> tuple[archs.Architecture, dict[str, Any]]:
    """The architecture of ``state`` and its constructor arguments, read off keys and shapes alone; ``kind`` (an
    architecture, a role or a legacy kind) restricts the choice."""
    found = archs.detect(state)
    if kind is None:
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(arch.name for arch, _ in found)
            raise ConversionError(f"{path}: the tensors fit several architectures ({names}); choose one with --model")
        raise ConversionError(_unknown_layout(state, path))
    legacy = kind in archs.LEGACY_KINDS and kind not in archs.REGISTRY or kind == "vgg19"
    try:
        wanted = archs.resolve(kind)
    except KeyError as e:
        raise ConversionError(e.args[0]) from None
    for arch, config in found:
        if arch is wanted:
            return arch, config
    if found:
        other = found[0][0]
        raise ConversionError(
            f"{path}: this looks like a {_label(other, legacy)} checkpoint: use --model {_label(other, legacy)} "
            f"(a {kind} checkpoint has {wanted.signature_keys[0]!r})"
        )
    missing = [k for k in wanted.signature_keys if k not in state]
    raise ConversionError(
        f"{path}: the tensors do not fit a {kind} ({wanted.name})"
        + (f": missing key {missing[0]!r}" if missing else ": its layer shapes differ")
        + f"; {_unknown_layout(state, path, header=False)}"
    )


def _unknown_layout(state: Mapping[str, np.ndarray], path: Path, header: bool = True) -> str:
    near = archs.closest(state)
    described = "; ".join(
        f"{arch.name} (lacks {', '.join(repr(k) for k in missing[:2])})" if missing else f"{arch.name} (shapes differ)"
        for arch, missing in near
    )
    keys = ", ".join(repr(k) for k in list(state)[:4])
    text = f"closest known architectures: {described}; the checkpoint's first keys: {keys}"
    return f"{path}: no known architecture fits these tensors; {text}" if header else text


def _with_scale(arch: archs.Architecture, config: dict[str, Any], scale: int | None, path: Path) -> dict[str, Any]:
    """Some layouts do not encode their scale (PAN x2 and x3 share every shape): --scale, else the file name's."""
    if "scale" not in config:
        return config
    if config["scale"] is not None:
        if scale not in (None, config["scale"]):
            raise ConversionError(f"{path}: --scale {scale}, but the tensors are of a x{config['scale']} {arch.name}")
        return config
    if scale is None:
        named = re.findall(r"(?<![0-9])x(\d)(?![0-9])|(?<![0-9a-z])(\d)x(?![0-9a-z])", path.stem.lower())
        guesses = {int(a or b) for a, b in named}
        if len(guesses) != 1:
            raise ConversionError(
                f"{path}: a {arch.name}'s scale is not in its tensors (its layers have the same shapes at every "
                "scale) nor in the file name; pass --scale N"
            )
        scale = guesses.pop()
        print(f"note: {path.name}: scale x{scale} read from the file name (--scale overrides it)", file=sys.stderr)
    return config | {"scale": scale}


def convert_state_dict(
    kind: str | None, state: Mapping[str, np.ndarray], path: Path = Path("<state_dict>"), scale: int | None = None
) -> tuple[archs.Architecture, dict[str, Any], dict]:
    """``(architecture, config, variables)`` of ``state``; raises ConversionError on any mismatch."""
    arch, config = choose_architecture(kind, state, path)
    config = _with_scale(arch, config, scale, path)
    _finite_float32(state, [k for k in state if not k.endswith(IGNORED_SUFFIXES)], path)
    try:
        variables = arch.to_flax(state, config)
    except ValueError as e:
        raise ConversionError(f"{path}: the tensors do not match a {arch.name} with {config}\n{e}") from None
    _check_against_module(arch.name, config, variables, path)
    return arch, config, variables


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

    try:
        expected = jax.tree.map(lambda a: tuple(a.shape), abstract_variables(build_model(kind, config)))
    except (TypeError, ValueError) as e:  # e.g. --scale 5 for a network made for x2, x3, x4
        raise ConversionError(f"{path}: a {kind} cannot be built with {config}: {str(e).splitlines()[0]}") from None
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


def convert_file(
    kind: str | None,
    input_path: str | Path,
    output_dir: str | Path,
    overwrite: bool = False,
    scale: int | None = None,
) -> Path:
    from jsr.checkpoints import ModelFileError, save_model

    input_path = Path(input_path)
    state = read_state_dict(input_path)
    arch, config, variables = convert_state_dict(kind, state, input_path, scale)
    metadata = {"source": {"file": input_path.name, "sha256": sha256(input_path)}}
    try:
        return save_model(output_dir, arch.name, config, variables, metadata=metadata, overwrite=overwrite)
    except ModelFileError as e:
        raise ConversionError(str(e)) from e


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jsr-convert",
        description="Convert a PyTorch checkpoint (.pt/.pth, zip or legacy; .safetensors) to a jsr model directory "
        "(Orbax checkpoint + jsr_model.json). The architecture is detected from the tensors: "
        + ", ".join(sorted(archs.REGISTRY))
        + ".",
        epilog="examples:\n  jsr-convert --input SRGAN.pt --output weights/srgan\n"
        "  jsr-convert --input netG_epoch_4_100.pth --output weights/srgan-paper-x4\n"
        "  jsr-convert --model vgg19 --input vgg19-dcbb9e9d.pth --output weights/vgg19",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    names = sorted(set(archs.REGISTRY) | set(archs.LEGACY_KINDS))
    parser.add_argument(
        "--model",
        default=None,
        choices=names,
        help="the architecture (default: detected from the tensors' names and shapes); 'generator' and "
        "'discriminator' name SRGAN-PyTorch's",
    )
    parser.add_argument("--input", required=True, help=".pt / .pth (zip or legacy torch format) or .safetensors")
    parser.add_argument("--output", required=True, help="model directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument(
        "--scale",
        type=int,
        default=None,
        help="for layouts whose scale is not in the tensors (PAN x2/x3): default read from the file name (x2, 3x)",
    )
    args = parser.parse_args(argv)  # usage errors: argparse's message and exit code 2
    # An output the system refuses (a file in the way, read-only, disk full) is exit 1, the one rule of every jsr
    # command (jsr.errors): the arguments were well-formed, the location is what needs fixing.
    return run_cli(lambda: _convert(args))


def _convert(args: argparse.Namespace) -> int:
    from jsr.checkpoints import read_description

    out = convert_file(args.model, args.input, args.output, overwrite=args.overwrite, scale=args.scale)
    description = read_description(out)
    print(f"wrote {description['arch']} {description['config']} ({description['num_params']:,} parameters) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
