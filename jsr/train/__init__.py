"""Training: ``jsr-train --config=configs/X.py --workdir=DIR [--config.field=value ...]`` (``cli``).

Rooms: ``loop.train_and_evaluate`` (the run, top to bottom), ``common`` (the ``Method`` protocol the loop drives,
the generator's initial variables), ``standard`` (SRResNet / SRGAN / ESRGAN: ``TrainState``, ``make_steps``),
``deltastn`` (Delta-STN), ``validation`` (the trainer's use of ``jsr.evaluate``'s evaluator). The run itself is
resolved once from the config by ``jsr.spec.resolve``.
"""

from jsr.spec import TrainingDiverged, TrainingError, resolve
from jsr.train.cli import main
from jsr.train.common import Method, build_generator
from jsr.train.loop import train_and_evaluate
from jsr.train.standard import TrainState, build_standard

__all__ = [
    "Method",
    "TrainState",
    "TrainingDiverged",
    "TrainingError",
    "build_generator",
    "build_standard",
    "main",
    "resolve",
    "train_and_evaluate",
]
