"""``train_and_evaluate``: the run, top to bottom. Resolve the config once; build the mesh, the generator and the
method (standard or Delta-STN); restore the latest checkpoint of ``workdir`` if there is one; then loop: step -> log
-> validate (a new best is exported to ``best/``) -> checkpoint. A run killed at any point resumes from its last
checkpoint and ends bit-for-bit where an uninterrupted run would.
"""

from __future__ import annotations

import math
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jsr import atomic, checkpoints, onednn, parallel
from jsr import data as jdata
from jsr import workdir as workdirs
from jsr.logger import MetricLogger
from jsr.spec import RunSpec, TrainingDiverged, TrainingError, as_spec, distributed_spec
from jsr.train.common import Method
from jsr.train.deltastn import DeltaSTNMethod
from jsr.train.standard import StandardMethod
from jsr.train.validation import Validator


def train_and_evaluate(config, workdir: str | Path) -> dict[str, float]:
    """Train (or resume) ``config`` (a ConfigDict or its RunSpec) in ``workdir``; returns the final validation
    metrics."""
    workdir = Path(workdir).absolute()
    if isinstance(config, RunSpec) and config.distributed.enabled:
        raise TrainingError(
            "a jax.distributed run needs the config itself, not its RunSpec: resolving it started JAX, and "
            "jax.distributed.initialize must come first"
        )
    d = distributed_spec(config) if not isinstance(config, RunSpec) else config.distributed
    if d.enabled:
        parallel.initialize_distributed(d.coordinator_address, d.num_processes, d.process_id)
    run = as_spec(config)
    primary = jax.process_index() == 0
    lock = workdirs.lock(workdir) if primary else None  # a second run on this workdir stops here
    try:
        return _train(run, workdir, primary)
    finally:
        if lock is not None:
            lock.close()


def _train(run: RunSpec, workdir: Path, primary: bool) -> dict[str, float]:
    note = print if primary else (lambda message: None)
    if primary:
        for done in workdirs.clean_leftovers(workdir, workdir / "checkpoints", [workdir / "best"]):
            note(done)
    mesh = parallel.make_mesh(jax.devices()[: run.num_devices] if run.num_devices else None)
    try:
        parallel.check_batch_size(run.batch_size, mesh)
    except ValueError as e:
        raise TrainingError(f"config.{e}") from None
    generator = run.model.build()

    # The method (plain or Delta-STN) owns its state, steps and batches.
    try:
        train_iter = jdata.make_train_iterator(run.data, run.batch_size, run.seed, mesh)
        validator = Validator(run, generator)
        method: Method = (DeltaSTNMethod if run.deltastn.enabled else StandardMethod)(run, mesh, generator, train_iter)
    except (FileNotFoundError, ValueError) as e:  # missing / unprepared data set, bad files, bad data fields
        raise TrainingError(f"config: {e}") from e
    state = method.state

    # Resume, logs.
    manager = checkpoints.TrainCheckpoints(workdir / "checkpoints", keep=run.keep_checkpoints)
    extra = {"best_psnr_y": -math.inf}
    restored = manager.restore_latest(state, note=note)
    if restored is not None:
        state, saved = restored
        for name, iterator in method.iterators.items():
            iterator.set_state(saved["data"][name])
        extra = saved["extra"]
        method.restore_host_state(saved.get("plateau"))
    step = int(state.step)
    logger = MetricLogger(workdir, enabled=primary, total_steps=run.num_train_steps, resume_step=step)
    # how it was trained, not what it is
    how = {"conv": run.model.conv, "compute_dtype": run.model.compute_dtype, "cpu_onednn": run.cpu_onednn}
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(workdir / "config.json", run.config_json + "\n")
        checkpoints.write_description(
            workdir,
            run.model.arch,
            run.model.config,
            {"stage": run.stage, "training_config": "config.json"} | how,
        )
        logger.note(
            f"{'resuming at' if step else 'starting'} step {step}/{run.num_train_steps} on "
            f"{mesh.devices.size} device(s), stage {run.stage}"
            f"{', Delta-STN' if run.deltastn.enabled else ''}, workdir {workdir}"
        )
        if slow := onednn.slow_bf16_note(run.model.compute_dtype, jax.default_backend()):
            logger.note(slow)

    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))

    def last_good() -> str:
        advice = "Lower the learning rate or check the data."
        if manager.latest_step() is None:
            return f"no checkpoint had been saved yet, so a rerun starts from step 0. {advice}"
        return f"the last good checkpoint (step {manager.latest_step()}) in {manager.directory} is intact. {advice}"

    def save(step: int, final: bool = False) -> None:
        # The loss of step k is computed before update k: only the parameters themselves prove a state is good.
        if not bool(all_finite(method.trained_params(state))):
            raise TrainingDiverged(f"parameters became non-finite by step {step}; {last_good()}")
        meta = {
            "data": {name: it.get_state() for name, it in method.iterators.items()},
            "extra": extra,
            "plateau": method.host_state(),
        }
        manager.save(step, state, meta, method.generator_variables(state), force=final)

    pending_metrics: list[dict] = []
    scores: dict[str, float] = {}
    try:
        while step < run.num_train_steps and stop["signal"] is None:
            state, step_metrics = method.advance(state, step)
            step += 1
            pending_metrics.append(step_metrics)
            if step % run.log_every_steps == 0 or step == run.num_train_steps:
                keys = sorted(set().union(*pending_metrics))  # hyper-step metrics appear every K steps only
                summary = {k: float(np.mean([m[k] for m in pending_metrics if k in m])) for k in keys}
                if not all(np.isfinite(v) for v in summary.values()):
                    bad = {k: v for k, v in summary.items() if not np.isfinite(v)}
                    raise TrainingDiverged(f"non-finite training metrics {bad} at step {step}; {last_good()}")
                logger.write(step, summary | method.host_scalars(state), loss=method.loss_metric)
                pending_metrics = pending_metrics[-1:]
            if step % run.eval_every_steps == 0 or step == run.num_train_steps:
                scores, outputs = validator(method.generator_variables(state))
                logger.write(step, scores)
                logger.images(step, "val/lr_bicubic_sr_hr", validator.image_grid(outputs, run.eval_images))
                state = method.after_validation(state, scores)
                if scores["val/psnr_y"] > extra["best_psnr_y"]:
                    extra = extra | {"best_psnr_y": scores["val/psnr_y"], "best_step": step}
                    if primary and jax.process_count() == 1:
                        checkpoints.save_model(
                            workdir / "best",
                            run.model.arch,
                            run.model.config,
                            parallel.local_copy(method.generator_variables(state)),
                            metadata={"step": step, **scores} | how,
                            overwrite=True,
                        )
            if step % run.checkpoint_every_steps == 0:
                save(step)
        if stop["signal"] is not None:
            logger.note(f"received signal {stop['signal']}: saving step {step} and stopping")
        save(step, final=True)
    finally:
        manager.wait()  # an in-flight save completes (or fails) before anyone reads the directory
        signal.signal(signal.SIGTERM, previous)
        for iterator in method.iterators.values():
            iterator.close()
        logger.close()
    if stop["signal"] is None and not scores:  # resumed a finished run: nothing was evaluated in the loop
        scores = validator(method.generator_variables(state))[0]
    if scores and primary:
        logger.note("final: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if run.deltastn.enabled:
            plot, moves = plot_hyperparameters(workdir)
            logger.note(f"Delta-STN moved {moves}; trajectories: {plot}")
    return scores


@jax.jit
def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def plot_hyperparameters(workdir: Path) -> tuple[Path, str]:
    """``hyperparameters.png`` in the workdir (each tuned hyperparameter against the step, from metrics.jsonl) and
    a line "name first -> last, ..." of where they went."""
    from jsr.figures import line_plots
    from jsr.logger import read_series

    series = read_series(workdir, prefix="hp/")
    moves = ", ".join(
        f"{name.removeprefix('hp/')} {ys[0]:.4g} -> {ys[-1]:.4g}" for name, (_, ys) in series.items() if ys
    )
    return line_plots(series, workdir / "hyperparameters.png", title="Delta-STN hyperparameters"), moves
