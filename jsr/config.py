"""The full set of training config fields with their defaults; every ``configs/*.py`` starts from ``base_config``.

Contract (read by other tools): ``num_train_steps``, ``log_every_steps``, ``eval_every_steps``,
``checkpoint_every_steps``, ``seed``, ``batch_size`` (global), ``stage`` ('mse' | 'gan'), ``init_from``,
``model.*``, ``data.*`` (``default_data_config``), ``optim.*``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

from jsr import images

# Per-example augmentation magnitudes (config.data.augment fields) and their shapes; jsr.data.augment reads them.
AUGMENT_PARAM_SHAPES = {
    "rotation_deg": (),
    "translate": (2,),
    "scale": (),
    "shear_deg": (),
    "perspective_distortion": (),
    "perspective_prob": (),
    "grayscale_prob": (),
    "hflip_prob": (),
    "vflip_prob": (),
    "transpose_prob": (),
}
# The original study's torchvision augmentation pipeline, in those units.
STUDY_RECIPE = {
    "rotation_deg": 180.0,
    "translate": (0.2, 0.2),
    "scale": 0.3,
    "shear_deg": 40.0,
    "perspective_distortion": 0.5,
    "perspective_prob": 0.5,
    "grayscale_prob": 0.1,
    "hflip_prob": 0.5,
    "vflip_prob": 0.5,
    "transpose_prob": 0.0,
}


def default_augment_config() -> ml_collections.ConfigDict:
    """Augmentation off by default; ``STUDY_RECIPE`` holds the original study's magnitudes."""
    return ml_collections.ConfigDict(
        {
            "enabled": False,
            "mode": "derive",  # 'derive': LR re-made from the warped HR on device | 'paired': warp both
            "fill": "white",  # colour name, #rrggbb or 'r,g,b'
            **{name: (0.0, 0.0) if name == "translate" else 0.0 for name in AUGMENT_PARAM_SHAPES},
        }
    )


def default_data_config() -> ml_collections.ConfigDict:
    """Every ``config.data`` field with its default."""
    return ml_collections.ConfigDict(
        {
            "source": "samples",  # 'samples' | 'pokemon' | 'div2k' | 'folder'
            "data_dir": "",  # TFDS data_dir ('' = ~/tensorflow_datasets)
            "manual_dir": "",  # Pokemon PNGs for offline preparation (python -m jsr.data.prepare)
            "folder": "",  # HR images (source 'folder')
            "lr_folder": "",  # matching LR images by file stem ('' = LR by Pillow downscale of HR)
            "val_folder": "",  # validation/test HR images ('' = hold out val_fraction of `folder`)
            "val_lr_folder": "",
            "val_fraction": 0.1,
            "skip_bad_files": False,  # False: stop before training with the list of bad files; True: skip them
            "max_image_pixels": images.MAX_PIXELS,  # larger folder images are bad files, refused before decoding
            "scale": 4,
            "patch_size": 24,  # LR training crop (HR = scale * patch); 0 = whole images
            "eval_patch_size": 0,  # LR centre crop for evaluation; 0 = whole images
            "downscale": "bicubic",  # host LR: Pillow 'bicubic' | 'lanczos' | ..., or 'matlab' (MATLAB imresize)
            "background": "white",  # for transparent images in folders
            "num_threads": 0,  # host decode/crop threads; 0 = min(8, CPU cores): extra threads lose to the GIL
            "num_workers": 0,  # Grain worker processes (0 = threads only)
            "prefetch": 4,  # host batches prepared ahead (at least num_threads, one per thread)
            "device_prefetch": 2,  # batches already placed on the devices ahead
            "augment": default_augment_config(),
            # LR re-made on device from the (augmented) HR: blur (HR px) -> x scale bicubic -> noise (std, [0, 1])
            "degrade": ml_collections.ConfigDict({"enabled": False, "blur_sigma": 0.0, "noise_sigma": 0.0}),
        }
    )


def optimizer_config(learning_rate: float, **overrides) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "name": "adam",  # 'adam' | 'sgd'
            "learning_rate": learning_rate,
            "momentum": 0.9,  # sgd only
            "schedule": "constant",  # 'constant' | 'step' (x gamma every step_size) | 'cosine' (over decay_steps)
            "step_size": 1,
            "gamma": 1.0,
            "decay_steps": 1,
            "b1": 0.9,
            "b2": 0.999,
            "weight_decay": 0.0,
            "clip_grad_norm": 0.0,
        }
        | overrides
    )


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.stage = "mse"  # 'mse': pixel loss only | 'gan': + VGG54 perceptual + adversarial
    c.num_train_steps = 1000
    c.batch_size = 16  # global, split over all devices of all processes
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3  # the latest k; the best generator by val PSNR-Y is kept apart in workdir/best
    c.eval_max_images = 0  # validation images per evaluation (0 = the whole split)
    c.eval_images = 3  # image rows (LR | bicubic | SR | HR) sent to TensorBoard
    c.init_from = ""  # a converted model directory or a training workdir: the generator starts from it
    c.num_devices = 0  # devices of this process to use (0 = all); multi-host runs use all
    c.compute_dtype = "float32"  # 'bfloat16' on GPU/TPU: parameters stay float32
    # oneDNN's CPU convolutions (jsr.onednn; model.conv 'auto' is then 'onednn'): 'auto' = for compute_dtype
    # 'bfloat16' on a CPU with AVX512_BF16 or AMX-BF16, 'on', 'off'
    c.cpu_onednn = "auto"
    c.distributed = ml_collections.ConfigDict(
        {"enabled": False, "coordinator_address": "", "num_processes": 0, "process_id": -1}
    )
    # conv: how the convolutions are computed, not what (same outputs and gradients to float rounding, tested; the
    # frozen VGG19 in 'fast' and 'winograd' use Winograd F(4x4, 3x3) on CPU, ~1e-5): 'fast' = jsr.ops.conv's
    # weight gradients (reverse mode only, so not Delta-STN), 'winograd' = 'fast' with the float32 3x3 convs'
    # forward, input and kernel gradients by Winograd F(4x4, 3x3) (jsr.ops.winograd, equal to ~1e-5; the fastest
    # MSE and GAN steps of 64-channel models on a CPU, longer to compile; the U-Net discriminator keeps 'fast'),
    # 'onednn' = 'fast' in the forms oneDNN runs fastest (see cpu_onednn), 'xla' = XLA's own; 'auto' on CPU =
    # 'winograd' for float32 architectures that declare cpu_winograd, else 'fast' ('onednn' when cpu_onednn is on
    # for a bfloat16 run), 'xla' under Delta-STN and on GPU/TPU
    # arch: '' = the architecture of init_from (any registered one, with its own constructor arguments), or
    # srresnet built from n_feats / num_blocks / bicubic_skip when training from scratch
    # options: constructor arguments of another architecture trained from scratch (arch='rrdbnet', ...)
    c.model = ml_collections.ConfigDict(
        {"arch": "", "n_feats": 64, "num_blocks": 16, "bicubic_skip": False, "conv": "auto", "options": {}}
    )
    # arch: 'srgan' (SRGAN-PyTorch's, patch_size 0 = scale x data.patch_size) or 'unet_sn' (Real-ESRGAN's U-Net
    # with spectral norm, n_feats = its num_feat)
    c.discriminator = ml_collections.ConfigDict({"arch": "srgan", "n_feats": 64, "patch_size": 0})
    c.loss = ml_collections.ConfigDict(
        {
            "pixel": 1.0,
            "pixel_kind": "mse",  # 'mse' (SRGAN) or 'l1' (ESRGAN)
            "vgg_criterion": "mse",  # feature distance: 'mse' (SRGAN) or 'l1' (ESRGAN, with a conv*_* tap)
            "gan": "standard",  # 'standard' (non-saturating BCE) or 'relativistic' (ESRGAN's relativistic average)
            "vgg": 0.006,
            "vgg_tap": "relu5_4",  # reluB_I after the activation (SRGAN); convB_I before it (ESRGAN)
            "adversarial": 1e-3,
            "tv": 0.0,
            "vgg_weights": "",  # converted torchvision VGG19 (tools/convert_torch_weights.py --model vgg19)
            "allow_random_vgg": False,  # tests only: a randomly initialised VGG19 instead of failing
        }
    )
    c.optim = ml_collections.ConfigDict(
        {
            "g": optimizer_config(1e-4),
            "d": optimizer_config(1e-4),
            "trainable": (),  # regexes over generator parameter paths; () = train everything
            "freeze_frozen_batch_stats": True,  # frozen layers' BatchNorm use their running statistics
            "plateau": {
                "enabled": False,
                "metric": "val/psnr_y",
                "mode": "max",
                "factor": 0.5,
                "patience": 10,
                "min_scale": 0.0,
            },
            # 'one' | 'study' (the original study's): max(5 - epoch // 5, 1) D passes per G step, early in training
            "d_passes": "one",
            "steps_per_epoch": 0,  # for 'study' d_passes
        }
    )
    c.data = default_data_config()
    c.deltastn = ml_collections.ConfigDict(
        {
            "enabled": False,  # Delta-STN tunes the hyperparameters below during training (stage mse)
            "hypers": {},  # name -> (low, high, init); high None = positive. See jsr/deltastn/sr.py for names.
            "warmup_steps": 100,  # weight steps before the first hyper step
            "weight_steps_per_hyper": 5,
            "tau": 1e-3,  # entropy weight
            "init_sigma": 1.0,  # perturbation std, unconstrained units
            "response_lr": 1e-4,  # Adam on R, r_b, V
            "hyper_lr": 1e-2,  # RMSprop on u and on the scales, as the authors
            "scale_lr": 1e-2,
            "val_batch_size": 0,  # 0 = batch_size
        }
    )
    return c


def shrink(c: ml_collections.ConfigDict, *, steps: int = 3, batch_size: int = 4, eval_images: int = 1):
    """A config's `tiny` variant (big_vision's runlocal idea): the same code paths at test sizes, every
    stage of the loop (log, validate, checkpoint) reached within ``steps``."""
    c.model.n_feats = 8
    c.model.num_blocks = 2
    c.data.patch_size = 8
    c.batch_size = batch_size
    c.num_train_steps = steps
    c.log_every_steps = 1
    c.eval_every_steps = steps
    c.checkpoint_every_steps = steps
    c.eval_max_images = eval_images
    return c


def load_config_file(path: str | Path, variant: str = "") -> ml_collections.ConfigDict:
    """``get_config(variant)`` of a config file, as ``--config=path:variant`` would load it."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"jsr_config_{path.stem}", path)
    if spec is None or not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()
