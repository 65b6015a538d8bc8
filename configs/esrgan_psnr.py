"""ESRGAN's PSNR-oriented stage (BasicSR's train_RRDBNet_PSNR_x4 recipe): RRDBNet 23 blocks x 64 features, growth 32,
L1 pixel loss only, Adam 2e-4, LR 32 px crops (HR 128), batch 16, on DIV2K. Its result initialises configs/esrgan.py.

    python -m jsr.train --config=configs/esrgan_psnr.py --workdir=runs/rrdb_psnr
"""

import ml_collections

from jsr.config import base_config, shrink


def get_config(variant: str = ""):
    c = base_config()
    c.stage = "mse"  # the pixel-only stage; loss.pixel_kind makes it L1
    c.model.arch = "rrdbnet"
    c.model.options = ml_collections.ConfigDict({"num_feat": 64, "num_block": 23, "num_grow_ch": 32})
    c.loss.pixel_kind = "l1"
    c.data.source = "div2k"
    c.data.patch_size = 32
    c.batch_size = 16
    c.num_train_steps = 1_000_000
    c.optim.g.learning_rate = 2e-4
    if variant == "tiny":
        shrink(c, steps=3, batch_size=4)
        c.model.options = ml_collections.ConfigDict({"num_feat": 8, "num_block": 1, "num_grow_ch": 4})
        c.data.source = "samples"
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; use '' or 'tiny'")
    return c
