"""The Delta-STN method (``config.deltastn``, jsr/deltastn): K weight steps (general + linearised response) : 1 hyper
step on validation batches; the tuned hyperparameters are logged as ``hp/<name>``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jsr import data as jdata
from jsr import parallel
from jsr.deltastn import jit_steps
from jsr.deltastn.sr import make_deltastn
from jsr.optim import make_optimizer
from jsr.spec import RunSpec
from jsr.train.common import init_generator_variables


class DeltaSTNMethod:
    loss_metric = "general_loss"

    def __init__(self, run: RunSpec, mesh, generator, train_iter):
        rng = jax.random.PRNGKey(run.seed)
        variables = init_generator_variables(run, generator, rng)
        self.stn = make_deltastn(run, generator, make_optimizer(run.optim.g, variables["params"], run.optim.trainable))
        p = run.data.patch_size or 16
        self.state = parallel.put_replicated(
            self.stn.init(rng, variables, jnp.zeros((1, p, p, 3)), train=True, mutable=["batch_stats"]), mesh
        )
        self.steps = jit_steps(self.stn, mesh, donate=True)
        val_source = jdata.make_source(run.data, "validation", run.data.patch_size)
        val_iter = jdata.make_train_iterator(
            run.data, run.deltastn.val_batch_size, run.seed + 1, mesh, source=val_source
        )
        self.train_iter, self.val_iter = train_iter, val_iter
        self.iterators = {"train": train_iter, "val": val_iter}

    def advance(self, state, step: int):
        state, metrics = self.steps.weight(state, next(self.train_iter))
        if self.stn.hyper_due(step + 1):
            state, hyper_metrics = self.steps.hyper(state, next(self.val_iter))
            metrics = {**metrics, **hyper_metrics}
        return state, metrics

    def generator_variables(self, state) -> dict:
        return {"params": state.params, "batch_stats": state.model_state["batch_stats"]}

    def trained_params(self, state):
        return state.params, state.response, state.u, state.s

    def host_scalars(self, state) -> dict:
        hps = {f"hp/{k}": v for k, v in self.stn.hparams(state).items()}
        return hps | {f"sigma/{k}": v for k, v in self.stn.sigmas(state).items()}

    def after_validation(self, state, scores: dict):
        return state

    def host_state(self) -> dict | None:
        return None

    def restore_host_state(self, saved: dict | None) -> None:
        pass
