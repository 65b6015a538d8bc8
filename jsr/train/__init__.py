"""Training: ``jsr-train --config=configs/X.py --workdir=DIR [--config.field=value ...]`` (``cli``).

Rooms: ``loop.train_and_evaluate`` (the run, top to bottom), ``common`` (the ``Method`` protocol the loop drives,
the generator's initial variables), ``standard`` (SRResNet / SRGAN / ESRGAN: ``TrainState``, ``make_steps``),
``deltastn`` (Delta-STN), ``validation`` (the trainer's use of ``jsr.evaluate``'s evaluator). The run itself is
resolved once from the config by ``jsr.spec.resolve``.
"""

import importlib

# Imported at first use: `jsr-train` resolves the run and starts reading its compiled programs before it imports
# the trainer (jsr.train.cli), which would be pointless if importing this package imported the trainer first.
_EXPORTS = {
    "Method": "jsr.train.common",
    "TrainState": "jsr.train.standard",
    "TrainingDiverged": "jsr.spec",
    "TrainingError": "jsr.spec",
    "build_generator": "jsr.train.common",
    "build_standard": "jsr.train.standard",
    "main": "jsr.train.cli",
    "resolve": "jsr.spec",
    "train_and_evaluate": "jsr.train.loop",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jsr.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
