"""The seed study's transfer-learning recipe: fine-tune the released SRGAN generator on Pokemon artwork.

Whole 256x256 images (no crops), batch 24, generator initialised from the converted SRGAN.pt, only the upsampler
(`tail`) and `last_conv` trained, the seed's heavy geometric augmentation (warp HR on the device, LR re-derived
from the warped HR), G = MSE + 0.006 VGG54 + 1e-3 adversarial, D: Adam 5e-5 with StepLR(200 epochs, x0.1) and the
seed's extra D passes early on, G: Adam 1e-4 halved when validation PSNR-Y stalls for 10 evaluations (the seed
watched validation VGG54; PSNR-Y needs no VGG pass at validation time).

    python tools/convert_torch_weights.py --model generator --input SRGAN.pt --output weights/srgan
    python tools/convert_torch_weights.py --model vgg19 --input vgg19-dcbb9e9d.pth --output weights/vgg19
    python -m jsr.data.prepare --dataset=pokemon
    python -m jsr.train --config=configs/pokemon.py --workdir=runs/pokemon

`configs/pokemon.py:tiny` is the same recipe shrunk for tests (random init, small crops, a few steps).
"""

from jsr.config import STUDY_RECIPE, base_config, shrink

TRAIN_IMAGES = 485  # ids 1..809, 60% by id
BATCH = 24
STEPS_PER_EPOCH = -(-TRAIN_IMAGES // BATCH)


def get_config(variant: str = ""):
    c = base_config()
    c.stage = "gan"
    c.init_from = "weights/srgan"
    c.loss.vgg_weights = "weights/vgg19"
    c.model.n_feats = 64
    c.model.num_blocks = 16
    c.data.source = "pokemon"
    c.data.scale = 4
    c.data.patch_size = 0  # whole 256x256 images, as the seed
    c.data.downscale = "bicubic"  # the seed's report; its code used Lanczos: --config.data.downscale=lanczos
    c.data.augment.enabled = True
    c.data.augment.mode = "derive"
    c.data.augment.fill = "white"
    for name, value in STUDY_RECIPE.items():
        c.data.augment[name] = value
    c.discriminator.patch_size = 256
    c.batch_size = BATCH
    c.num_train_steps = 100 * STEPS_PER_EPOCH
    c.log_every_steps = STEPS_PER_EPOCH
    c.eval_every_steps = 5 * STEPS_PER_EPOCH
    c.checkpoint_every_steps = 5 * STEPS_PER_EPOCH
    c.optim.trainable = ("^tail", "^last_conv")
    c.optim.g.learning_rate = 1e-4
    c.optim.plateau.enabled = True
    c.optim.plateau.metric = "val/psnr_y"
    c.optim.plateau.factor = 0.5
    c.optim.plateau.patience = 10
    c.optim.d.learning_rate = 5e-5
    c.optim.d.schedule = "step"
    c.optim.d.step_size = 200 * STEPS_PER_EPOCH
    c.optim.d.gamma = 0.1
    c.optim.d_passes = "study"
    c.optim.steps_per_epoch = STEPS_PER_EPOCH
    if variant == "tiny":
        c.init_from = ""
        c.loss.vgg_weights = ""
        c.loss.allow_random_vgg = True
        shrink(c, eval_images=2)
        c.discriminator.patch_size = 0  # scale x patch
        c.optim.steps_per_epoch = 2
    elif variant:
        raise ValueError(f"unknown variant {variant!r}; use '' or 'tiny'")
    return c
