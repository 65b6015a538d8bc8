"""Saving and loading model weights with Orbax, in one layout shared by converted and trained models.

A model directory holds ``jsr_model.json`` (the model kind and its constructor arguments) and ``variables/``
(an Orbax checkpoint of ``{"params": ..., "batch_stats": ...}``). Directories are written under a temporary
name and renamed into place, so a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jsr import archs, atomic, orbax_direct, program_cache
from jsr.errors import UserError

if TYPE_CHECKING:
    import orbax.checkpoint as ocp

MODEL_FILE = "jsr_model.json"
VARIABLES_DIR = "variables"
GENERATOR_ITEM = "generator"  # the item of a train checkpoint holding the generator's variables
TRAIN_CHECKPOINTS = "checkpoints"
FORMAT_VERSION = 1
MODEL_ENTRIES = (MODEL_FILE, VARIABLES_DIR)  # all that a model directory holds
STRAGGLER_WAIT_S = 1.0
OS_LITTER = (".DS_Store", "Thumbs.db", "desktop.ini")  # what file browsers drop into any folder they show


def _orbax():
    """Orbax, imported where it is used: a warm ``jsr-upscale`` and a fresh run's first step go without it."""
    import orbax.checkpoint

    return orbax.checkpoint


class ModelFileError(UserError):
    """A model directory is missing, incomplete or inconsistent."""


def build_model(arch: str, config: dict[str, Any]) -> nn.Module:
    """The Flax module of architecture ``arch`` (or a legacy model kind) with constructor arguments ``config``."""
    try:
        architecture = archs.resolve(arch)
    except KeyError as e:
        raise ModelFileError(e.args[0]) from None
    try:
        return architecture.build(config)
    except TypeError as e:
        raise ModelFileError(f"bad constructor arguments for {arch}: {config} ({e})") from e


def count_params(variables: dict) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(variables.get("params", {}))))


def save_model(
    directory: str | os.PathLike,
    kind: str,
    config: dict[str, Any],
    variables: dict,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``variables`` of a ``kind`` model to ``directory`` atomically; returns the directory.

    ``overwrite`` replaces an existing model directory, and only that: a folder holding anything else is refused.
    """
    directory = Path(directory).absolute()
    if directory.is_symlink():  # replace what the link points at, keep the link
        directory = directory.resolve()
    atomic.heal(directory)
    if directory.exists() and not directory.is_dir():
        raise ModelFileError(f"{directory} is a file, not a folder; choose another output")
    if directory.is_dir() and any(directory.iterdir()):
        if not overwrite:
            raise ModelFileError(f"{directory} exists and is not empty; choose another output or allow overwriting")
        foreign = sorted(p.name for p in directory.iterdir() if p.name not in MODEL_ENTRIES + OS_LITTER)
        if foreign or not (directory / MODEL_FILE).is_file():
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ModelFileError(
                f"{directory} is not a jsr model directory (it holds {shown or f'no {MODEL_FILE}'}); "
                "overwriting would delete it: choose an empty or new output folder"
            )
    staging = atomic.staging_dir(directory)
    try:
        variables = jax.tree.map(np.asarray, variables)
        ocp = _orbax()
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / VARIABLES_DIR, variables)
            checkpointer.wait_until_finished()
        write_description(staging, kind, config, {"num_params": count_params(variables), **(metadata or {})})
        atomic.replace_dir(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def write_description(
    directory: Path, kind: str, config: dict[str, Any], metadata: dict[str, Any] | None = None
) -> None:
    """``jsr_model.json``: what ``load_model`` needs to rebuild the module (written atomically)."""
    arch = archs.resolve(kind)
    description = {**(metadata or {}), "format": FORMAT_VERSION, "arch": arch.name, "kind": arch.role, "config": config}
    atomic.write_text(directory / MODEL_FILE, json.dumps(description, indent=2, default=float) + "\n")


def read_description(directory: str | os.PathLike) -> dict[str, Any]:
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelFileError(f"model directory {directory} does not exist")
    path = directory / MODEL_FILE
    if not path.is_file():
        raise ModelFileError(
            f"{directory} is not a jsr model directory (no {MODEL_FILE}); convert PyTorch weights with "
            "`python tools/convert_torch_weights.py` or point at a training workdir"
        )
    redo = "re-convert or re-export the model"
    try:
        description = json.loads(path.read_bytes().decode("utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError alike: the file is damaged
        raise ModelFileError(f"{path} is not valid JSON ({e}); {redo}") from e
    if not isinstance(description, dict):
        raise ModelFileError(f"{path} holds a JSON {type(description).__name__}, not an object; {redo}")
    for key, kind, name in (("kind", str, "string"), ("config", dict, "object")):
        if key not in description:
            raise ModelFileError(f"{path} has no {key!r} field; {redo}")
        if not isinstance(description[key], kind):
            raise ModelFileError(f"{path}: {key!r} is {description[key]!r}, not a JSON {name}; {redo}")
    return description


def load_model(directory: str | os.PathLike, expect: str | None = None) -> tuple[nn.Module, dict]:
    """``(module, variables)`` such that ``module.apply(variables, x_nhwc)`` runs the saved network (eval mode).

    ``directory`` is a model directory (converted weights, a run's ``best/``) or a training workdir, whose latest
    checkpoint's generator is loaded. ``expect`` (a role: 'generator', 'discriminator', 'features', or an
    architecture name such as 'vgg19') refuses anything else before reading the weights.
    """
    directory = Path(directory).absolute()
    atomic.heal(directory)  # a replacement killed half-way: put the old version back first
    description = read_description(directory)
    name = description.get("arch", description["kind"])
    module = build_model(name, description["config"])
    arch = archs.resolve(name)
    if expect is not None and expect not in (arch.role, arch.name):
        raise ModelFileError(f"{directory} holds a {arch.role} ({arch.name}), not a {expect}")
    expected = _expected_shapes(module, description, directory)
    variables = _read_variables(directory, description)
    check_variables(variables, expected, directory, f"a {description['kind']} with {description['config']}")
    return module, variables


def _read_variables(directory: Path, description: dict[str, Any]) -> dict:
    """The saved variables as numpy arrays; any Orbax / tensorstore failure becomes one ModelFileError."""
    variables_path = directory / VARIABLES_DIR
    if variables_path.is_dir():
        where, redo = variables_path, "the model directory is damaged or incomplete: re-convert or re-export it"
    elif (directory / TRAIN_CHECKPOINTS).is_dir():
        checkpoints = directory / TRAIN_CHECKPOINTS
        step = _readable(lambda: TrainCheckpoints(checkpoints).latest_step(), checkpoints, "its step list is damaged")
        if step is None:
            raise ModelFileError(f"training workdir {directory} has no checkpoint yet")
        where = directory / TRAIN_CHECKPOINTS / str(step) / GENERATOR_ITEM
        if not where.is_dir() and (where.parent / "state").is_dir():
            raise ModelFileError(
                f"{where.parent} was written by an older jsr, whose checkpoints do not export the generator: load "
                f"its best/ model directory instead ({directory / 'best'}), or train it again"
            )
        redo = "this checkpoint is damaged: move it away to load the previous one, or export the model again"
    else:
        raise ModelFileError(f"{directory} has neither {VARIABLES_DIR}/ nor {TRAIN_CHECKPOINTS}/")

    def restore() -> dict:
        direct = orbax_direct.read_tree(where)
        if direct is not None:
            return direct
        with _orbax().StandardCheckpointer() as checkpointer:
            return restore_on_host(checkpointer, where)

    return jax.tree.map(np.asarray, _readable(restore, where, redo))


def _readable(read: Callable[[], Any], where: Path, redo: str) -> Any:
    # The error is caught inside the quiet block and not chained: its frames hold the abandoned async reads, which
    # must be collected (and report) while stderr is still silenced.
    with _quiet_orbax(), _stderr_quiet():
        try:
            return read()
        except ModelFileError:
            raise
        except Exception as e:  # noqa: BLE001 - Orbax raises bare Exception, ValueError, OSError... for damaged files
            reason = _root_cause(e)
            del e
            _drop_abandoned_orbax_reads()
            time.sleep(STRAGGLER_WAIT_S)  # the failed read's other async reads finish (and report) while quiet
    raise ModelFileError(f"{where}: cannot read the saved weights ({reason}); {redo}")


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs a warning per missing file; the one error line says it instead."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _root_cause(e: BaseException) -> str:
    """The innermost error's first line (tensorstore's says which file and byte range), without the spec dump."""
    while e.__cause__ is not None:
        e = e.__cause__
    return _first_line(e).split(" [tensorstore_spec", 1)[0]


def abstract_variables(module: nn.Module) -> dict:
    """Shapes and dtypes of the variables ``module.init`` creates, without computing any."""
    side = getattr(module, "patch_size", 16)  # the discriminator's dense head depends on its input side
    channels = 1 if archs.architecture_of(module).colour == "y" else getattr(module, "channels", 3)
    x = jax.ShapeDtypeStruct((1, side, side, channels), jnp.float32)
    return dict(jax.eval_shape(module.init, jax.random.PRNGKey(0), x))


def _expected_shapes(module: nn.Module, description: dict[str, Any], directory: Path) -> dict[str, tuple[int, ...]]:
    def compute() -> dict[str, list[int]]:
        return {name: list(shape) for name, shape in _flat_shapes(abstract_variables(module)).items()}

    try:
        shapes = program_cache.remembered(
            "variable-shapes", program_cache.module_key(module), compute, modules=(module,)
        )
        return {name: tuple(shape) for name, shape in shapes.items()}
    except (TypeError, ValueError) as e:  # e.g. "num_blocks": "two" builds a module that cannot initialise
        raise ModelFileError(
            f"{directory / MODEL_FILE}: the config {description['config']} does not make a {description['kind']} "
            f"({_first_line(e)}); re-convert or re-export the model"
        ) from e


def check_variables(variables: dict, expected: dict[str, tuple[int, ...]], directory: Path, what: str) -> None:
    """Refuse variables that do not fit the module (names the first parameter off) or hold NaN / inf."""
    got = _flat_shapes(variables)
    redo = "re-convert or re-export the model"
    for name in sorted(expected.keys() | got.keys(), key=lambda n: (not n.startswith("params/"), n)):
        if name not in got:
            raise ModelFileError(
                f"{directory}: {MODEL_FILE} describes {what}, but the saved variables have no {name} "
                f"(expected shape {expected[name]}); {redo}"
            )
        if name not in expected:
            raise ModelFileError(
                f"{directory}: the saved variables hold {name} (shape {got[name]}), which {what} does not have; "
                f"{MODEL_FILE} does not match them: {redo}"
            )
        if got[name] != expected[name]:
            raise ModelFileError(
                f"{directory}: {name} is saved with shape {got[name]}, but {what} ({MODEL_FILE}) expects "
                f"{expected[name]}; {redo}"
            )
    for name, leaf in _flat_leaves(variables).items():
        bad = int(np.size(leaf) - np.count_nonzero(np.isfinite(leaf)))
        if bad:
            raise ModelFileError(
                f"{directory}: {name} holds {bad} non-finite values (NaN or inf) of {np.size(leaf)}; the weights "
                f"are damaged (or training diverged): {redo}"
            )


def _flat_leaves(tree: Any) -> dict[str, np.ndarray]:
    """{"a/b": leaf}, named as ``_flat_shapes`` names them."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    names = ["/".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in p) for p, _ in leaves]
    return {name: np.asarray(leaf) for name, (_, leaf) in zip(names, leaves, strict=True)}


def restore_on_host(checkpointer: ocp.StandardCheckpointer, path: Path) -> Any:
    """Restore a pytree onto this process's first device, whatever devices (or processes) saved it."""
    metadata = checkpointer.metadata(path)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    return checkpointer.restore(path, target)


class CheckpointMismatch(UserError):
    """The saved run does not fit the current configuration."""


class CheckpointUnreadable(UserError):
    """Every checkpoint of a run is damaged."""


class TrainCheckpoints:
    """A run's Orbax checkpoints: ``<step>/state`` (the method's state pytree), ``<step>/meta`` (JSON: data iterator
    position, plateau, bookkeeping) and ``<step>/generator`` (the generator's variables, exported by the trainer:
    what ``load_model`` of a workdir reads). Orbax finalises a step by renaming a temporary directory, so a crash
    mid-save leaves the previous checkpoints untouched. Steps that cannot be read are moved to
    ``unreadable_checkpoints/``, never deleted."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        self.directory = Path(directory).absolute()
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)
        self._manager: ocp.CheckpointManager | None = None  # opened at first use: a fresh run starts without Orbax

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            self._manager = self._open()
        return self._manager

    def _open(self) -> ocp.CheckpointManager:
        ocp = _orbax()
        options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True)
        return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta", GENERATOR_ITEM))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict, generator: dict, force: bool = False) -> None:
        if self.manager.latest_step() == step:
            return
        ocp = _orbax()
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        args = ocp.args.Composite(**items, **{GENERATOR_ITEM: ocp.args.StandardSave(generator)})
        self.manager.save(step, args=args, force=force)

    def restore_latest(self, template: Any, note: Callable[[str], None] = print) -> tuple[Any, dict] | None:
        """(state shaped and sharded like ``template``, meta) of the newest step that restores, or None for a fresh
        run. Unreadable newer steps are set aside (with a note); a run saved with another model shape is refused."""
        if self._manager is None and not any(self.directory.iterdir()):
            return None  # nothing saved yet (not even a half-written step)
        ocp = _orbax()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        unreadable: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            self._refuse_other_shapes(step, abstract)
            try:
                with _stderr_quiet():  # a failed read makes Orbax's pending async reads print pages of tracebacks
                    restored = self.manager.restore(
                        step,
                        args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
                    )
            except (NameError, AttributeError, ImportError):
                raise  # a bug here, not a damaged file
            except Exception as e:  # noqa: BLE001 - Orbax / tensorstore / JSON errors all mean "cannot be read"
                _drop_abandoned_orbax_reads()
                unreadable.append((step, _first_line(e)))
                continue
            self._set_aside(unreadable, note)
            return restored.state, restored.meta
        if unreadable:
            steps = "; ".join(f"step {step}: {reason}" for step, reason in unreadable)
            raise CheckpointUnreadable(
                f"no checkpoint in {self.directory} can be read ({steps}); move or delete that folder to start the "
                "run over, or restore it from a backup"
            )
        return None

    def _refuse_other_shapes(self, step: int, abstract: Any) -> None:
        try:
            # quiet: Orbax warns that the step-level metadata file is not in the item's folder (it is one up)
            with _stderr_quiet(), _orbax().StandardCheckpointer() as checkpointer:
                metadata = checkpointer.metadata(self.directory / str(step) / "state")
            saved = _flat_shapes(getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata))
        except Exception:  # noqa: BLE001 - unreadable metadata: the restore attempt reports it
            return
        wanted = _flat_shapes(abstract)
        for path, shape in wanted.items():
            if path in saved and saved[path] != shape:
                raise CheckpointMismatch(
                    f"{self.directory} holds a run with other model shapes ({path}: saved {saved[path]}, the config "
                    f"gives {shape}); resume with the config it was started with (its config.json) or choose a new "
                    "--workdir"
                )
        missing = sorted(set(wanted) - set(saved))
        if saved and missing and len(missing) == len(wanted):
            return  # no common naming at all: leave the verdict to the restore
        if missing:
            raise CheckpointMismatch(
                f"{self.directory} holds a run of another configuration (the saved state has no {missing[0]}); "
                "resume with the config it was started with (its config.json) or choose a new --workdir"
            )

    def _set_aside(self, unreadable: list[tuple[int, str]], note: Callable[[str], None]) -> None:
        if not unreadable:
            return
        self.manager.close()
        self._manager = None
        aside = self.directory.parent / "unreadable_checkpoints"
        aside.mkdir(exist_ok=True)
        for step, reason in unreadable:
            target = aside / str(step)
            while target.exists():
                target = target.with_name(target.name + "_")
            os.replace(self.directory / str(step), target)
            note(f"checkpoint step {step} cannot be read ({reason}); moved it to {target}")

    def wait(self) -> None:
        if self._manager is not None:  # nothing was saved or read through Orbax: nothing in flight
            self._manager.wait_until_finished()


def _raised_in_orbax(error: BaseException | None) -> bool:
    """Whether ``error`` (or an error it was raised from) passed through a frame of an orbax source file."""
    seen = 0
    while error is not None and seen < 16:
        tb = error.__traceback__
        while tb is not None:
            if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


NEVER_RETRIEVED = ("Task exception was never retrieved", "Future exception was never retrieved")  # asyncio's words


class _AbandonedOrbaxTasks(logging.Filter):
    """Drops asyncio's "Task / Future exception was never retrieved" records for the failed reads of an abandoned
    restore."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        never_retrieved = record.getMessage().startswith(NEVER_RETRIEVED)
        return not (never_retrieved and _raised_in_orbax(error))


def _drop_abandoned_orbax_reads() -> None:
    """From now on in this process, the abandoned async reads of a failed restore may be collected at any time
    (even after stderr is back): their "Exception ignored in <coroutine>" reports and asyncio's "Task exception was
    never retrieved" records are dropped; any other report is kept."""
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _AbandonedOrbaxTasks) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_AbandonedOrbaxTasks())
    previous = sys.unraisablehook
    if getattr(previous, "drops_orbax_reads", False):
        return

    def hook(unraisable):
        code = getattr(unraisable.object, "cr_code", None)
        if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
            return
        previous(unraisable)

    hook.drops_orbax_reads = True
    sys.unraisablehook = hook


@contextlib.contextmanager
def _stderr_quiet():
    """Silence this process's stderr (file descriptor 2: C++ and Python writers alike) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            except BaseException:
                time.sleep(STRAGGLER_WAIT_S)  # a failed read's other async reads finish (and report) while quiet
                raise
            finally:
                gc.collect()  # abandoned async reads report when collected: here, while quiet
                sys.stderr.flush()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0].split('. See full')[0][:200]}" if text else type(e).__name__


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"a/b/0": shape} of every array-like leaf, whatever container types (dataclass, dict, tuple) hold them."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    out = {}
    for path, leaf in leaves:
        if hasattr(leaf, "shape"):
            names = [str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path]
            out["/".join(names)] = tuple(int(d) for d in leaf.shape)
    return out
