"""The seed's unfinished objective: fine-tune the released generator on Pokemon while Delta-STN tunes the seed's
augmentation magnitudes and the weight decay (validation pixel MSE as the objective; stage mse, since the
hypergradient needs a validation loss that is not adversarial).

    python -m jsr.train --config=configs/pokemon_deltastn.py --workdir=runs/pokemon_deltastn

It starts from the seed's magnitudes (`configs/pokemon.py`) and moves each within the range given here.
"""

from pathlib import Path

from jsr.config import load_config_file, shrink


def get_config(variant: str = ""):
    c = load_config_file(Path(__file__).with_name("pokemon.py"))
    c.stage = "mse"
    c.optim.plateau.enabled = False  # Delta-STN owns the hyperparameters
    c.optim.d_passes = "one"
    a = c.data.augment
    c.deltastn.enabled = True
    c.deltastn.hypers = {
        "rotation_deg": (0.0, 180.0, a.rotation_deg),
        "translate": (0.0, 0.3, a.translate[0]),
        "scale": (0.0, 0.5, a.scale),
        "shear_deg": (0.0, 45.0, a.shear_deg),
        "perspective_distortion": (0.0, 0.8, a.perspective_distortion),
        "perspective_prob": (0.0, 1.0, a.perspective_prob),
        "grayscale_prob": (0.0, 1.0, a.grayscale_prob),
        "weight_decay": (0.0, None, 1e-5),
    }
    c.deltastn.warmup_steps = 5 * c.optim.steps_per_epoch
    if variant == "tiny":
        shrink(c, steps=6, batch_size=4, eval_images=2)
        c.init_from = ""
        c.loss.vgg_weights = ""
        c.discriminator.patch_size = 0
        c.deltastn.warmup_steps = 2
        c.deltastn.weight_steps_per_hyper = 2
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; use '' or 'tiny'")
    return c
