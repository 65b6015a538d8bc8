"""ESRGAN's GAN stage (BasicSR's train_ESRGAN_x4 recipe), from the PSNR stage: G = 1e-2 L1 + 1.0 perceptual (L1 on
VGG19 conv5_4, BEFORE its ReLU) + 5e-3 relativistic average adversarial; D = Real-ESRGAN's U-Net discriminator with
spectral norm, relativistic average loss; Adam 1e-4 for both.

    python -m jsr.train --config=configs/esrgan.py --workdir=runs/esrgan \\
        --config.init_from=runs/rrdb_psnr --config.loss.vgg_weights=weights/vgg19
"""

from pathlib import Path

from jsr.config import load_config_file


def get_config(variant: str = ""):
    c = load_config_file(Path(__file__).with_name("esrgan_psnr.py"), variant)
    c.stage = "gan"
    c.model.arch = ""  # the architecture and arguments of init_from
    c.init_from = "runs/rrdb_psnr"
    c.loss.update(pixel=1e-2, pixel_kind="l1", vgg=1.0, vgg_tap="conv5_4", vgg_criterion="l1", adversarial=5e-3)
    c.loss.gan = "relativistic"
    c.loss.vgg_weights = "weights/vgg19"
    c.discriminator.arch = "unet_sn"
    c.discriminator.n_feats = 64
    c.optim.g.learning_rate = 1e-4
    c.optim.d.learning_rate = 1e-4
    if not variant:
        c.num_train_steps = 400_000
    if variant == "tiny":
        c.init_from = ""  # the test passes the tiny PSNR run's workdir
        c.loss.vgg_weights = ""
        c.loss.allow_random_vgg = True
        c.discriminator.n_feats = 8
    return c
