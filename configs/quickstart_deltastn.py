"""The quickstart with Delta-STN tuning its degradation, rotation and weight decay while it trains.

    python -m jsr.train --config=configs/quickstart_deltastn.py --workdir=runs/quickstart_deltastn

The training LR is re-made on device from each (augmented) HR crop with a per-example blur and noise; the
validation LR is a clean bicubic downscale, so Delta-STN should lower the blur and noise it starts from.
Hyperparameter trajectories go to metrics.jsonl (`hp/*`, `sigma/*`), TensorBoard and, at the end,
`hyperparameters.png` in the workdir. `:tiny` is the test-sized variant.
"""

from pathlib import Path

from jsr.config import load_config_file, shrink


def get_config(variant: str = ""):
    c = load_config_file(Path(__file__).with_name("quickstart.py"))
    c.model.conv = "auto"  # the quickstart pins 'fast'; Delta-STN's forward-mode response needs XLA's ('auto' -> 'xla')
    c.data.augment.enabled = True
    c.data.augment.mode = "derive"
    c.data.augment.fill = "white"
    c.data.augment.hflip_prob = 0.5
    c.data.augment.vflip_prob = 0.5
    c.deltastn.enabled = True
    c.deltastn.hypers = {
        "blur_sigma": (0.0, 3.0, 1.0),  # HR pixels
        "noise_sigma": (0.0, 0.1, 0.03),  # LR, [0, 1] units
        "rotation_deg": (0.0, 45.0, 10.0),
        "weight_decay": (0.0, None, 1e-5),
    }
    # Hyper steps must be many and large enough to move: 2 weight steps per hyper step after 50 warm-up steps,
    # (350 - 50) / 2 = 150 hyper steps, RMSprop at 5e-2 (the authors' 1e-2 with K = 5 gave 40 steps of 1e-2 here:
    # a random walk of ~0.1 in the unconstrained units, i.e. nothing visible).
    c.deltastn.warmup_steps = 50
    c.deltastn.weight_steps_per_hyper = 2
    c.deltastn.hyper_lr = 5e-2
    c.deltastn.scale_lr = 5e-2
    c.num_train_steps = 350
    c.optim.g.decay_steps = c.num_train_steps
    c.log_every_steps = 25
    c.eval_every_steps = 175
    c.checkpoint_every_steps = 50
    if variant == "tiny":
        shrink(c, steps=6, batch_size=8)
        c.log_every_steps = 2
        c.checkpoint_every_steps = 2
        c.deltastn.warmup_steps = 2
        c.deltastn.weight_steps_per_hyper = 2
        c.optim.g.decay_steps = c.num_train_steps
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; use '' or 'tiny'")
    return c
