"""``jsr-train``: argparse like every jsr CLI; ``--config.FIELD=VALUE`` overrides fields of the config file."""

from __future__ import annotations

import argparse
import ast
import difflib
import sys
from pathlib import Path

import ml_collections

from jsr import compile_cache, runtime
from jsr.config import load_config_file
from jsr.errors import USAGE, run_cli

EXAMPLES = """Every field and its default: jsr/config.py. An unknown field is an error. Exit codes: 0 done, 1 the run
failed (e.g. diverged), 2 bad usage or input (config, data, workdir in use). Compiled programs are cached in
~/.cache/jsr/xla (or $JAX_COMPILATION_CACHE_DIR); --no-compile-cache or JSR_NO_COMPILE_CACHE=1 turns that off.

examples:
  jsr-train --config=configs/quickstart.py --workdir=runs/quickstart
  jsr-train --config=configs/pokemon.py:tiny --workdir=runs/t --config.num_train_steps=20 --config.batch_size=8
  jsr-train --config=configs/quickstart.py --workdir=runs/ft --config.init_from=weights/srgan \\
      --config.data.source=folder --config.data.folder=photos/ "--config.optim.trainable=('tail|last_conv',)"
"""
OVERRIDE = "--config."


class OverrideError(ValueError):
    pass


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jsr-train",
        usage="jsr-train --config=CONFIG.py[:VARIANT] --workdir=DIR [--config.FIELD=VALUE ...] [--no-compile-cache]",
        description="Train (or resume) a super-resolution generator; DIR holds checkpoints/, best/, metrics.jsonl, "
        "tensorboard/.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="a configs/*.py file, optionally :VARIANT (e.g. :tiny)")
    p.add_argument("--workdir", required=True, help="checkpoints, logs and the config (resumes if present)")
    compile_cache.add_flag(p)
    return p


def load_config(spec: str) -> ml_collections.ConfigDict:
    """``FILE[:VARIANT]`` -> the locked config (a path that exists as given is never split at ':')."""
    path, variant = spec, ""
    if not Path(spec).exists() and ":" in spec:
        path, variant = spec.rsplit(":", 1)
    config = load_config_file(path, variant)
    config.lock()
    return config


def override_arguments(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the other arguments, the overrides as ``--config.FIELD=VALUE``): ``--config.FIELD VALUE`` is joined, and a
    bare ``--config.FIELD`` stands for ``=True``."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(OVERRIDE) and "=" not in arg:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                overrides.append(f"{arg}={argv[i + 1]}")
                i += 1
            else:
                overrides.append(f"{arg}=True")
        elif arg.startswith(OVERRIDE):
            overrides.append(arg)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def apply_override(config: ml_collections.ConfigDict, argument: str) -> None:
    """``--config.a.b=VALUE``: VALUE read as the field's type (strings as given, the rest as Python literals; a
    section takes a dict literal)."""
    dotted, sep, text = argument[len(OVERRIDE) :].partition("=")
    if not sep:
        raise OverrideError(f"{argument}: expected {OVERRIDE}FIELD=VALUE")
    node, names = config, dotted.split(".")
    for depth, name in enumerate(names):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {OVERRIDE}{'.'.join([*names[:depth], near[0]])}?" if near else ""
            raise OverrideError(f"unknown config field {OVERRIDE}{dotted}{hint}")
        if depth < len(names) - 1:
            node = node[name]
    current = node[names[-1]]
    try:
        node[names[-1]] = parse_value(text, current)
    except (TypeError, ValueError) as e:
        raise OverrideError(f"{OVERRIDE}{dotted}={text}: {' '.join(str(e).split())}") from None


def parse_value(text: str, current):
    if isinstance(current, str):
        return text
    if isinstance(current, bool):
        words = {"true": True, "t": True, "1": True, "false": False, "f": False, "0": False}
        if text.lower() not in words:
            raise ValueError("expected True or False")
        return words[text.lower()]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if isinstance(current, ml_collections.ConfigDict):
            raise ValueError(f"a section takes a dict literal, e.g. \"{{'key': 1}}\" (keys: {list(current)})") from None
        if current is not None and not isinstance(current, tuple | list):
            raise ValueError(f"not a {type(current).__name__} literal") from None
        if "," in text:
            raise ValueError("quote each element of a tuple, e.g. \"('a', 'b')\"") from None
        value = text  # a bare word: one string
    if isinstance(current, ml_collections.ConfigDict):
        if not isinstance(value, dict):
            raise ValueError("a section takes a dict literal")
        return ml_collections.ConfigDict(value)
    if isinstance(current, tuple | list) and not isinstance(value, tuple | list):
        value = (value,)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    return value


def main(argv: list[str] | None = None) -> int:
    rest, overrides = override_arguments(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_args(rest)
    except SystemExit as e:  # argparse printed the usage and the one-line reason (or --help)
        return int(e.code or 0) and USAGE
    try:
        config = load_config(args.config)
        for override in overrides:
            apply_override(config, override)
    except OverrideError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE
    except Exception as e:  # noqa: BLE001 - the config file itself: missing, unreadable, raising (a bad variant)
        print(f"error: --config={args.config}: {str(e).strip().splitlines()[-1].strip() or type(e).__name__}",
              file=sys.stderr)  # fmt: skip
        return USAGE
    quiet_orbax_info()
    runtime.start_command(not args.no_compile_cache)
    return run_cli(lambda: train(config, args.workdir) and 0)


def train(config: ml_collections.ConfigDict, workdir: str):
    """Resolve the run, start reading its compiled programs from disk in the background (they load while Python
    imports the trainer, ~0.5 s), then train."""
    from jsr import program_cache
    from jsr.spec import as_spec, distributed_spec

    if not distributed_spec(config).enabled:  # jax.distributed must start before anything resolves the run
        config = as_spec(config)
        program_cache.preload(config.program_key)
    from jsr.train.loop import train_and_evaluate

    return train_and_evaluate(config, workdir)


def quiet_orbax_info() -> None:
    """Orbax logs every save at INFO through absl's logger; keep the console to warnings."""
    from absl import logging

    logging.set_verbosity(logging.WARNING)
