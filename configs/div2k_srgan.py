"""SRGAN on DIV2K (SRGAN-PyTorch's recipe), starting from the SRResNet run: G = MSE + 0.006 VGG54 + 1e-3
adversarial, D step first on every batch, Adam 1e-4 for both, ~200k iterations (the source's 4000 epochs).

    python -m jsr.train --config=configs/div2k_srgan.py --workdir=runs/srgan \\
        --config.init_from=runs/srresnet --config.loss.vgg_weights=weights/vgg19
"""

from pathlib import Path

from jsr.config import load_config_file


def get_config(variant: str = ""):
    c = load_config_file(Path(__file__).with_name("div2k_srresnet.py"), variant)
    c.stage = "gan"
    c.init_from = "runs/srresnet"
    c.loss.vgg_weights = "weights/vgg19"
    c.num_train_steps = 200_000
    c.optim.d.learning_rate = 1e-4
    if variant == "tiny":
        c.init_from = ""
        c.loss.vgg_weights = ""
        c.loss.allow_random_vgg = True
        c.num_train_steps = 3
    return c
