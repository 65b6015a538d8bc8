"""Pure Flax modules (no I/O): the SRResNet generator, the SRGAN discriminator, VGG19 features."""

from jsr.models.discriminator import Discriminator
from jsr.models.srresnet import Generator, pixel_shuffle
from jsr.models.vgg import VGG19_TAPS, VGG19Features

MODEL_KINDS = {
    "generator": Generator,
    "discriminator": Discriminator,
    "vgg19": VGG19Features,
}

__all__ = [
    "MODEL_KINDS",
    "VGG19_TAPS",
    "Discriminator",
    "Generator",
    "VGG19Features",
    "pixel_shuffle",
]
