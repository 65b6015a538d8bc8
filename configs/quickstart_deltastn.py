"""The quickstart with Delta-STN tuning augmentation magnitudes, weight decay and input noise while it trains.

    python -m jsr.train --config=configs/quickstart_deltastn.py --workdir=runs/quickstart_deltastn

Hyperparameter trajectories go to metrics.jsonl (`hp/*`, `sigma/*`), TensorBoard and, at the end,
`hyperparameters.png` in the workdir. `:tiny` is the test-sized variant.
"""

from pathlib import Path

from jsr.config import load_config_file, shrink


def get_config(variant: str = ""):
    c = load_config_file(Path(__file__).with_name("quickstart.py"))
    c.data.augment.enabled = True
    c.data.augment.mode = "derive"
    c.data.augment.fill = "white"
    c.data.augment.hflip_prob = 0.5
    c.data.augment.vflip_prob = 0.5
    c.deltastn.enabled = True
    c.deltastn.hypers = {
        "rotation_deg": (0.0, 45.0, 10.0),
        "scale": (0.0, 0.3, 0.1),
        "shear_deg": (0.0, 20.0, 5.0),
        "weight_decay": (0.0, None, 1e-5),
        "input_noise": (0.0, 0.1, 0.01),
    }
    c.deltastn.warmup_steps = 100
    c.deltastn.weight_steps_per_hyper = 5
    c.num_train_steps = 300
    c.optim.g.decay_steps = c.num_train_steps
    c.log_every_steps = 25
    c.eval_every_steps = 150
    c.checkpoint_every_steps = 50
    if variant == "tiny":
        shrink(c, steps=6, batch_size=8)
        c.log_every_steps = 2
        c.checkpoint_every_steps = 2
        c.deltastn.warmup_steps = 2
        c.deltastn.weight_steps_per_hyper = 2
        c.optim.g.decay_steps = c.num_train_steps
        # the degradation path too (LR re-made on device per example), so the tests cover its resume
        c.deltastn.hypers = {**c.deltastn.hypers, "blur_sigma": (0.0, 3.0, 0.5), "noise_sigma": (0.0, 0.1, 0.01)}
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; use '' or 'tiny'")
    return c
