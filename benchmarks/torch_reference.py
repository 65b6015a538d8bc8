"""PyTorch side of ``benchmarks/run.py``: the same SRResNet / SRGAN networks, losses, optimiser and shapes as jsr.

    python benchmarks/torch_reference.py --case train_mse [--repeats 5 --warmup 2 --batch 16 --patch 24 ...]

``--variant`` picks what a speed-minded PyTorch user runs (``VARIANTS``): channels_last memory format for the
modules and inputs, and/or ``torch.compile`` (default, max-autotune, or on CUDA reduce-overhead: CUDA graphs) of
every module's forward; ``--amp`` adds bfloat16 autocast to any of them. ``first_s`` (the first call) holds the
compile; the timed repetitions follow ``--warmup`` untimed calls.

Prints ONE JSON line: {"case", "times_s" (one per repetition, warm-up excluded), "items" (images or megapixels per
repetition), "peak_rss_mb", "first_s", "versions"}. ``run.py`` starts one such process per case (a fresh process,
so the peak RSS is that case's), right after timing the jsr side of the same case.

Same network as ``jsr.models`` (SRGAN-PyTorch layout, one PReLU per layer as jsr has), random weights (timing
needs no real ones): Generator 16 blocks x 64 features, BN, x4 by two PixelShuffle(2); Discriminator with logits
(BCE-with-logits); VGG19 features up to relu5_4 (frozen). Adam(1e-4) for G and D.
train_mse: G forward, pixel MSE, backward, Adam step.
train_gan: as ``jsr.train``'s step: one G forward; D step (BCE real / fake on detached SR); then G step with
  MSE + 0.006 VGG54 + 1e-3 adversarial, where D (already updated, train mode) sees SR.
infer_128: eval-mode G on one 128x128 image under no_grad (-> 512x512).
infer_1024_tiled: a 1024x1024 image in 256-pixel tiles with ``overlap`` LR pixels of zero-padded context on each
  side (the windows jsr's Upscaler runs: 16 windows of 336x336), one window per forward, cores stitched.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
import torch.nn.functional as F

# benchmarks/run.py: this script's folder is on sys.path, and run.py imports only the standard library
from run import TORCH_VARIANTS, peak_rss_mb
from torch import nn

VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]


class ResidualBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1, self.prelu = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.PReLU()
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        return x + self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x)))))


class Generator(nn.Module):
    def __init__(self, n_feats: int = 64, num_blocks: int = 16, scale: int = 4):
        super().__init__()
        self.conv01 = nn.Sequential(nn.Conv2d(3, n_feats, 9, padding=4), nn.PReLU())
        self.body = nn.Sequential(*[ResidualBlock(n_feats) for _ in range(num_blocks)])
        self.conv02 = nn.Sequential(nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.BatchNorm2d(n_feats))
        factors = [2, 2] if scale == 4 else [scale]
        self.tail = nn.Sequential(
            *[
                nn.Sequential(nn.Conv2d(n_feats, n_feats * r * r, 3, padding=1), nn.PixelShuffle(r), nn.PReLU())
                for r in factors
            ]
        )
        self.last_conv = nn.Conv2d(n_feats, 3, 3, padding=1)

    def forward(self, x):
        x = self.conv01(x)
        x = self.conv02(self.body(x)) + x
        return torch.tanh(self.last_conv(self.tail(x)))


class Discriminator(nn.Module):
    """conv01, conv02 (stride 2), 3 x [conv+BN, stride-2 conv+BN], Linear 1024, Linear 1 -> logits."""

    def __init__(self, n_feats: int = 64, patch_size: int = 96):
        super().__init__()
        act = nn.LeakyReLU(0.01)
        layers = [nn.Conv2d(3, n_feats, 3, padding=1), act, nn.Conv2d(n_feats, n_feats, 3, 2, 1), act]
        c = n_feats
        for _ in range(3):
            layers += [nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), act]
            layers += [nn.Conv2d(2 * c, 2 * c, 3, 2, 1), nn.BatchNorm2d(2 * c), act]
            c *= 2
        self.features = nn.Sequential(*layers)
        self.tail = nn.Sequential(nn.Linear(c * (patch_size // 16) ** 2, 1024), act, nn.Linear(1024, 1))

    def forward(self, x):
        return self.tail(torch.flatten(self.features(x), 1))


class VGG54(nn.Module):
    """torchvision VGG19 ``features`` up to relu5_4 (index 35), ImageNet normalisation of [-1, 1] inputs."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x):
        return self.features(((x + 1) / 2 - self.mean) / self.std)


VARIANTS = TORCH_VARIANTS  # name -> (channels_last, torch.compile mode or None), defined beside the driver


APPLIED: dict = {}  # what the variant did to the generator, read back from the objects (reported)


def prepared(module: nn.Module, args):
    """``(module, forward)``: the module in the variant's memory format, and its (compiled) forward."""
    channels_last, mode = VARIANTS[args.variant]
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    forward = torch.compile(module, mode=mode) if mode else module
    if not APPLIED:  # the first module prepared is the generator
        conv = next(m for m in module.modules() if isinstance(m, nn.Conv2d))
        APPLIED["channels_last_weights"] = conv.weight.is_contiguous(memory_format=torch.channels_last)
        APPLIED["compiled"] = isinstance(forward, torch._dynamo.eval_frame.OptimizedModule)
    return module, forward


def as_input(x, args):
    x = x.contiguous(memory_format=torch.channels_last) if VARIANTS[args.variant][0] else x
    APPLIED.setdefault("channels_last_input", x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1)
    return x


def init_like_jsr(model: nn.Module) -> nn.Module:
    """N(0, 0.02) conv weights, zero biases (SRGAN-PyTorch's init, as jsr's CONV_INIT); the rest stays default."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0.0, 0.02)
                m.bias.zero_()
    return model


def autocast(args):
    """bfloat16 autocast ("eager AMP") when --amp, else a no-op context."""
    return torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.amp)


def make_train_step(case: str, args):
    dev = args.device
    g_module, g = prepared(init_like_jsr(Generator(args.n_feats, args.num_blocks)).train().to(dev), args)
    opt_g = torch.optim.Adam(g_module.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    hr_side = 4 * args.patch
    hr = as_input((torch.rand(args.batch, 3, hr_side, hr_side, generator=gen) * 2 - 1).to(dev), args)
    lr = as_input((torch.rand(args.batch, 3, args.patch, args.patch, generator=gen) * 2 - 1).to(dev), args)

    if case == "train_mse":

        def step():
            with autocast(args):
                sr = g(lr)
                loss = F.mse_loss(sr.float(), hr)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            return loss.item()  # the host reads the loss, as jsr's loop reads its metrics

        return step

    d_module, d = prepared(init_like_jsr(Discriminator(args.n_feats, hr_side)).train().to(dev), args)
    opt_d = torch.optim.Adam(d_module.parameters(), lr=1e-4)
    _, vgg = prepared(VGG54().eval().requires_grad_(False).to(dev), args)
    ones = torch.ones(args.batch, 1, device=dev)
    zeros = torch.zeros(args.batch, 1, device=dev)
    bce = F.binary_cross_entropy_with_logits

    def step():
        with autocast(args):
            sr = g(lr).float()
            # D step on the detached SR (as jsr: one G forward serves both updates)
            d_loss = bce(d(hr).float(), ones) + bce(d(sr.detach()).float(), zeros)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        # G step: pixel + 0.006 VGG54 + 1e-3 adversarial, D updated and in train mode
        with autocast(args):
            with torch.no_grad():
                f_hr = vgg(hr).float()
            g_loss = F.mse_loss(sr, hr) + 0.006 * F.mse_loss(vgg(sr).float(), f_hr) + 1e-3 * bce(d(sr).float(), ones)
        opt_g.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        return g_loss.item() + d_loss.item()

    return step


def make_infer(case: str, args):
    dev = args.device
    _, g = prepared(init_like_jsr(Generator(args.n_feats, args.num_blocks)).eval().to(dev), args)
    gen = torch.Generator().manual_seed(0)
    if case == "infer_128":
        image = torch.rand(1, 3, args.infer_side, args.infer_side, generator=gen)

        def run():
            with torch.inference_mode(), autocast(args):
                x = as_input(image.to(dev) * 2 - 1, args)
                return torch.clamp((g(x).float() + 1) / 2, 0, 1).cpu().numpy()

        return run
    side, t, o = args.tiled_side, args.tile, args.overlap
    image = torch.rand(1, 3, side, side, generator=gen)
    n = -(-side // t)
    canvas = torch.zeros(1, 3, n * t + 2 * o, n * t + 2 * o)
    canvas[:, :, o : o + side, o : o + side] = image
    win = t + 2 * o

    def run():
        out = torch.empty(1, 3, 4 * side, 4 * side)
        with torch.inference_mode(), autocast(args):
            for ty in range(n):
                for tx in range(n):
                    window = as_input(canvas[:, :, ty * t : ty * t + win, tx * t : tx * t + win].to(dev), args)
                    sr = torch.clamp((g(window * 2 - 1).float() + 1) / 2, 0, 1)
                    ch, cw = min(t, side - ty * t), min(t, side - tx * t)
                    core = sr[:, :, 4 * o : 4 * (o + ch), 4 * o : 4 * (o + cw)].cpu()
                    out[:, :, 4 * ty * t : 4 * (ty * t + ch), 4 * tx * t : 4 * (tx * t + cw)] = core
        return out.numpy()

    return run


def profile(fn, sync, steps: int) -> dict:
    """Self CPU time of every op over ``steps`` calls of ``fn``, ms per call (benchmarks/profile_step.py groups
    them)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
        sync()
    return {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages() if e.self_cpu_time_total > 0}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", required=True, choices=["train_mse", "train_gan", "infer_128", "infer_1024_tiled"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=24)
    p.add_argument("--n_feats", type=int, default=64)
    p.add_argument("--num_blocks", type=int, default=16)
    p.add_argument("--infer_side", type=int, default=128)
    p.add_argument("--tiled_side", type=int, default=1024)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=40)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = PyTorch's default)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (eager AMP)")
    p.add_argument("--variant", default="eager", choices=list(VARIANTS), help="memory format / torch.compile")
    p.add_argument(
        "--profile-steps", type=int, default=0, help="then this many steps under torch.profiler (adds profile_ms)"
    )
    args = p.parse_args(argv)
    if "reduce_overhead" in args.variant and not args.device.startswith("cuda"):
        p.error(f"--variant {args.variant} uses CUDA graphs: CUDA only")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # what a speed-minded PyTorch user sets: fixed shapes, tuned kernels
    if args.case.startswith("train"):
        fn = make_train_step(args.case, args)
        items = args.batch  # images
    else:
        fn = make_infer(args.case, args)
        side = args.infer_side if args.case == "infer_128" else args.tiled_side
        items = (4 * side) ** 2 / 1e6  # output megapixels
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    start = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - start
    for _ in range(max(0, args.warmup - 1)):
        fn()
    times = []
    for _ in range(args.repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    result = {
        "case": args.case,
        "times_s": times,
        "items": items,
        "first_s": first,
        "peak_rss_mb": peak_rss_mb(),
        "applied": APPLIED,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "device": args.device,
            "amp": args.amp,
            "variant": args.variant,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        },
    }
    if args.profile_steps:
        result["profile_ms"] = profile(fn, sync, args.profile_steps)
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
