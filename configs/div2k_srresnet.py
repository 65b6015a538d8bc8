"""SRResNet pre-training on DIV2K (SRGAN-PyTorch's recipe): pixel MSE, LR crops of 24 (HR 96), batch 16,
random flips and transposes, Adam 1e-4, ~400k iterations (the source's 8000 epochs of 50 batches).

    pip install -e '.[div2k]' && python -m jsr.data.prepare --dataset=div2k
    python -m jsr.train --config=configs/div2k_srresnet.py --workdir=runs/srresnet
"""

from jsr.config import base_config, shrink


def get_config(variant: str = ""):
    c = base_config()
    c.stage = "mse"
    c.data.source = "div2k"
    c.data.scale = 4
    c.data.patch_size = 24
    c.data.augment.enabled = True
    c.data.augment.mode = "paired"  # DIV2K ships its own LR: flip/transpose both, never resample
    c.data.augment.hflip_prob = 0.5
    c.data.augment.vflip_prob = 0.5
    c.data.augment.transpose_prob = 0.5
    c.batch_size = 16
    c.num_train_steps = 400_000
    c.log_every_steps = 500
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 10_000
    c.eval_max_images = 20
    c.optim.g.learning_rate = 1e-4
    if variant == "tiny":
        shrink(c)
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; use '' or 'tiny'")
    return c
