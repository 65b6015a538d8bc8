"""The embedded quickstart: offline on scikit-image's bundled photos, a few minutes on 2 CPU cores.

A small SRResNet (8 blocks x 32 features) learning the residual over a bicubic upscale, MSE stage, random LR
crops of 24 px. `python -m jsr.train --config=configs/quickstart.py --workdir=runs/quickstart`.
The `tiny` variant (`--config=configs/quickstart.py:tiny`) is what the tests run.
"""

from jsr.config import base_config, shrink


def get_config(variant: str = ""):
    c = base_config()
    c.stage = "mse"
    c.model.n_feats = 32
    c.model.num_blocks = 8
    c.model.bicubic_skip = True
    # 'auto' would be Winograd on a CPU: no faster for 32 channels over 400 steps, ~8 s more to compile and 1.1 s
    # more to load from the compilation cache (warm first step 2.5 vs 3.6 s; README, Performance)
    c.model.conv = "fast"
    c.data.source = "samples"
    c.data.patch_size = 24
    c.batch_size = 16
    c.num_train_steps = 400
    c.log_every_steps = 50
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 200
    c.optim.g.learning_rate = 5e-4
    c.optim.g.schedule = "cosine"
    c.optim.g.decay_steps = c.num_train_steps
    if variant == "tiny":
        shrink(c, steps=6, batch_size=8)
        c.log_every_steps = 2
        c.eval_every_steps = 3
        c.checkpoint_every_steps = 2
        c.optim.g.decay_steps = c.num_train_steps
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; use '' or 'tiny'")
    return c
