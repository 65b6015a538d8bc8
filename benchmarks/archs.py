"""Every RGB generator architecture jsr ships, on CPU: jsr against every PyTorch variant a speed-minded user would
run, in one run, on the same weights and shapes.

    /work/venv312/bin/python benchmarks/archs.py --torch-python /work/venv311/bin/python --json out.json
        [--arch rrdbnet,edsr,...] [--quick] [--no-torch] [--cases infer_64,train,infer_128] [--rounds 2]
        [--budget-s 1200] [--repeats 3] [--train-repeats 2] [--warmup 1] [--torch-variants NAME,...]

Networks (``--arch``, default: all; each at the size of a released model; ``--quick``: tiny ones on tiny shapes):
  rrdbnet        RRDBNet x4, 23 blocks x 64 features, growth 32 (RealESRGAN_x4plus), BasicSR's definition
  edsr           EDSR x4 baseline, 16 blocks x 64 features, res_scale 1 (BasicSR's EDSR_Mx4)
  edsr_full      EDSR x4, 32 blocks x 256 features, res_scale 0.1 (EDSR_Lx4; optional: runs while the budget allows)
  pan            PAN x4, nf 40, unf 24, 16 SCPA blocks (the released PANx4_DF2K)
  imdn           IMDN x4, 64 features, 6 IMDBs (the released IMDN_x4)
  srvgg_compact  SRVGGNetCompact x4, 64 features, 16 convs, PReLU (Real-ESRGAN's realesr-animevideov3)
  srresnet       SRResNet x4, 16 blocks x 64 features (SRGAN-PyTorch's released generator; images in [-1, 1])
  Not measured: vdsr and fsrcnn (colour 'y': luma-only networks, which jsr's Upscaler does not run) and
  srgan_paper (no PyTorch definition of leftthomas/SRGAN's generator in this repository); see ``SKIPPED``.
The PyTorch definitions are the parity tests' (tests/torch_archs_*.py, tests/torch_reference.py): the publishers'
attribute names, so their state_dicts have the released keys.
Weights: PyTorch's default initialisation (torch.manual_seed(0); BatchNorm affine and running statistics then
randomised so that they matter), saved once by the PyTorch side; the jsr side reads the state_dict with the
converter (``arch.detect`` must read back the benchmark's config, ``arch.to_flax`` maps the tensors): the same
weights on both sides, checked by comparing outputs (``checks``: max abs difference of the [0, 1] outputs) and, for
training, first losses. With ``--no-torch``: jsr's Flax init (PRNGKey 0).

Cases:
  infer_64    one 64x64 RGB image -> 256x256, batch 1 (every architecture): output megapixels/s
  train       rrdbnet only: one train step, batch 4, LR 32 px (HR 128), L1 loss, Adam(2e-4): images/s
  infer_128   one 128x128 image -> 512x512: output megapixels/s (while the budget allows)
Variants:
  jsr (this process, float32): inference through ``jsr.inference.Upscaler(module, variables, conv=...)`` with
    conv='xla' and conv='winograd' (its 'auto' on a CPU in float32: the default, whatever the architecture),
    whole image, result on the host as numpy; training by THE REAL TRAINER'S STEP: ``jsr.train.build_standard`` on
    ``configs/esrgan_psnr.py`` (RRDBNet, L1, Adam 2e-4) at batch 4, augmentation off, conv='fast' (the trainer's
    CPU default; ``--train-convs fast,xla`` adds XLA's), the state donated, the host reading the loss each step.
  PyTorch (a subprocess of ``--torch-python``, this same file with ``--torch-worker``): eager NCHW float32,
    channels_last float32, torch.compile (default mode) float32, channels_last + torch.compile float32 (the
    variants of benchmarks/run.py in torch.compile's default mode), and where the CPU has bf16 dot units
    (AVX512_BF16 / AMX flags) autocast bfloat16 and channels_last + autocast bfloat16; ``--torch-variants`` picks.
    Inference under ``torch.inference_mode()`` from the same HWC numpy image to a clamped HWC numpy result (images
    mapped to and from the network's range, [-1, 1] for srresnet, as the Upscaler does); training ``model(lr)``,
    ``F.l1_loss``, backward, ``Adam(lr=2e-4, fused=True)`` step, ``loss.item()``.
Method: per architecture, round and case, the jsr side then the PyTorch side (round 2: PyTorch first: ABBA), each
variant timed as one first call (compile for jsr and torch.compile: reported apart as ``first_s`` / ``compile_s``),
``--warmup`` untimed calls, then ``--repeats`` timed calls (train: ``--train-repeats``); variants run in reverse
order in the second round; medians over all rounds' repetitions; per-round ratios reported. jsr keeps its compiled
programs between rounds (compile is paid once per process); each PyTorch round is a fresh process, so its
torch.compile first call is paid again, against the inductor cache (``--torch-compile-cache``; its cold / warm
state before the run is recorded: a cold cache costs ~0.5-1 min per compiled variant and network here). Priority:
the first round of infer_64 of every (non-optional) architecture and the first round of train always run; then,
while the estimated end stays within ``--budget-s``: the optional architectures' first rounds, the second rounds,
infer_128. Skipped tasks are listed with the reason. A shared machine: each task records the share of the CPUs
other processes took meanwhile (``others_cpu_share``, from /proc/stat less this process tree's CPU time);
``--wait-quiet-s`` waits before each task for a quiet machine, ``--retry-busy N`` repeats a task that was not
(inductor compiles in the worker itself, ``--torch-compile-threads 1``: its default pool of compile processes is
never waited for, so their CPU time would count as another process's).
Ratios (throughputs, jsr / PyTorch: above 1 = jsr faster): ``ratio_best_float32`` = jsr's default path (Upscaler
'auto' / trainer 'auto') over the fastest PyTorch float32 variant (named), ``ratio_best_float32_jsr_fastest`` for
jsr's faster path, ``ratio_vs_eager`` against eager NCHW float32, and ``ratio_vs_fastest_any`` against the fastest
PyTorch variant of any precision (bf16 too).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _sibling(name: str):
    """benchmarks/<name>.py, loaded by its path: works when this file runs as a script and when a test loads it by
    path, without putting benchmarks/ on sys.path."""
    spec = importlib.util.spec_from_file_location(f"jsr_benchmarks_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _sibling("run")  # standard library only at import time: the PyTorch worker's Python loads it too
peak_rss_mb = run.peak_rss_mb

CASES = ("infer_64", "train", "infer_128")
# name -> (channels_last, torch.compile, autocast bfloat16): run.py's variants in torch.compile's default mode (its
# max-autotune / reduce-overhead ones are left out: minutes of autotuning on a CPU; CUDA graphs need CUDA), then
# autocast bfloat16
TORCH_VARIANTS = {
    f"torch_{name}": (channels_last, mode is not None, False)
    for name, (channels_last, mode) in run.TORCH_VARIANTS.items()
    if mode in (None, "default")
}
TORCH_VARIANTS |= {"torch_bf16": (False, False, True), "torch_channels_last_bf16": (True, False, True)}
LABELS = {
    "jsr_xla": "jsr float32, conv=xla",
    "jsr_winograd": "jsr float32, conv=winograd",
    "jsr_fast": "jsr float32, conv=fast (real trainer step)",
    "jsr_train_xla": "jsr float32, conv=xla (real trainer step)",
    "jsr_train_winograd": "jsr float32, conv=winograd (real trainer step)",
    "torch_eager": "torch eager NCHW float32",
    "torch_channels_last": "torch channels_last float32",
    "torch_compile": "torch.compile float32",
    "torch_channels_last_compile": "torch channels_last + compile float32",
    "torch_bf16": "torch autocast bfloat16",
    "torch_channels_last_bf16": "torch channels_last + autocast bfloat16",
}
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)  # jsr.archs.edsr.DIV2K_MEAN (detect's read-back checks they agree)

# benchmark name -> the registered architecture, the released model its size is, jsr's constructor arguments (the
# converter's config), --quick's overrides, the PyTorch definition (module in tests/, class) and its arguments
EDSR_BASELINE = dict(
    num_in_ch=3,
    num_out_ch=3,
    num_feat=64,
    num_block=16,
    scale=4,
    res_scale=1.0,
    img_range=255.0,
    rgb_mean=DIV2K_MEAN,
    layout="basicsr",
)


def edsr_torch_kwargs(c: dict) -> dict:
    """BasicSR EDSR's constructor arguments for a jsr edsr config."""
    keys = ("num_in_ch", "num_out_ch", "num_feat", "num_block", "res_scale")
    return {k: c[k] for k in keys} | {
        "upscale": c["scale"],
        "img_range": c["img_range"],
        "rgb_mean": tuple(c["rgb_mean"]),
    }


BENCHES = {
    "rrdbnet": {
        "arch": "rrdbnet",
        "released": "RealESRGAN_x4plus: RRDBNet x4, 23 blocks x 64 features, growth 32",
        "config": dict(num_in_ch=3, num_out_ch=3, scale=4, num_feat=64, num_block=23, num_grow_ch=32, layout="basicsr"),
        "quick": dict(num_feat=8, num_block=1, num_grow_ch=4),
        "torch": ("torch_archs_rrdb_edsr", "RRDBNet"),
        "torch_kwargs": lambda c: (
            {k: c[k] for k in ("num_in_ch", "num_out_ch", "scale", "num_feat", "num_block")}
            | {"num_grow_ch": c["num_grow_ch"]}
        ),
        # the real trainer's step on this config file, its model.options set from these config keys
        "train": ("esrgan_psnr.py", ("num_feat", "num_block", "num_grow_ch")),
    },
    "edsr": {
        "arch": "edsr",
        "released": "EDSR_Mx4 (BasicSR): EDSR x4 baseline, 16 blocks x 64 features, res_scale 1",
        "config": EDSR_BASELINE,
        "quick": dict(num_feat=8, num_block=1),
        "torch": ("torch_archs_rrdb_edsr", "EDSR"),
        "torch_kwargs": edsr_torch_kwargs,
    },
    "edsr_full": {
        "arch": "edsr",
        "released": "EDSR_Lx4 (BasicSR): EDSR x4, 32 blocks x 256 features, res_scale 0.1",
        "config": EDSR_BASELINE | dict(num_feat=256, num_block=32, res_scale=0.1),
        # 256 features is what makes detect's released rule give res_scale 0.1: --quick keeps the width, one block
        "quick": dict(num_block=1),
        "torch": ("torch_archs_rrdb_edsr", "EDSR"),
        "torch_kwargs": edsr_torch_kwargs,
        "optional": True,
    },
    "pan": {
        "arch": "pan",
        "released": "PANx4_DF2K (zhaohengyuan1/PAN): nf 40, unf 24, 16 SCPA blocks",
        "config": dict(in_nc=3, out_nc=3, nf=40, unf=24, nb=16, scale=4),
        "quick": dict(nf=8, unf=8, nb=1),
        "torch": ("torch_archs_pan_imdn", "PAN"),
        "torch_kwargs": lambda c: dict(c),
    },
    "imdn": {
        "arch": "imdn",
        "released": "IMDN_x4 (Zheng222/IMDN): 64 features, 6 IMDBs",
        "config": dict(in_nc=3, nf=64, num_modules=6, out_nc=3, scale=4),
        "quick": dict(nf=16, num_modules=1),  # 16: the contrast attention's 1/16 reduction keeps one channel
        "torch": ("torch_archs_pan_imdn", "IMDN"),
        "torch_kwargs": lambda c: {k: c[k] for k in ("in_nc", "nf", "num_modules", "out_nc")} | {"upscale": c["scale"]},
    },
    "srvgg_compact": {
        "arch": "srvgg_compact",
        # the file README's architecture table converts (realesr-general-x4v3 is the same with 32 convs)
        "released": "realesr-animevideov3 (Real-ESRGAN): SRVGGNetCompact x4, 64 features, 16 convs, PReLU",
        "config": dict(num_feat=64, num_conv=16, scale=4, channels=3),
        "quick": dict(num_feat=8, num_conv=2),
        "torch": ("torch_archs_compact_y", "SRVGGNetCompact"),
        "torch_kwargs": lambda c: (
            dict(num_in_ch=3, num_out_ch=3, num_feat=c["num_feat"], num_conv=c["num_conv"]) | {"upscale": c["scale"]}
        ),
    },
    "srresnet": {
        "arch": "srresnet",
        "released": "SRGAN-PyTorch's SRResNet / SRGAN x4 generator: 16 blocks x 64 features, BatchNorm, shared PReLU",
        "config": dict(n_feats=64, num_blocks=16, scale=4, channels=3),
        "quick": dict(n_feats=8, num_blocks=1),
        "torch": ("torch_reference", "Generator"),
        "torch_kwargs": lambda c: (
            dict(img_feat=c["channels"], n_feats=c["n_feats"], num_block=c["num_blocks"]) | {"scale": c["scale"]}
        ),
    },
}
# registered generators left out, with why (main() checks that every registered generator is measured or here)
SKIPPED = {
    "vdsr": "colour 'y': sees only luma; jsr's Upscaler runs RGB networks only",
    "fsrcnn": "colour 'y': sees only luma; jsr's Upscaler runs RGB networks only",
    "srgan_paper": "no PyTorch definition of leftthomas/SRGAN's generator in the repository (tests/ has none); the "
    "same Flax module as srresnet (jsr.models.Generator) in the paper's layout",
}


def bench_config(name: str, quick: bool) -> dict:
    bench = BENCHES[name]
    return dict(bench["config"]) | (bench["quick"] if quick else {})


def timed_calls(fn, first: bool, warmup: int, repeats: int) -> dict:
    """``first``: one timed first call (compile); then ``warmup`` untimed calls and ``repeats`` timed ones."""
    out = {}
    if first:
        start = time.perf_counter()
        fn()
        out["first_s"] = time.perf_counter() - start
    out["times_s"] = run.timed(fn, warmup, repeats)
    return out


# ------------------------------------------------------------------------------------------ PyTorch worker


def torch_model(spec: dict):
    """The PyTorch definition of ``spec['bench']`` at ``spec['config']`` (random weights until loaded)."""
    import importlib

    sys.path.insert(0, str(ROOT / "tests"))  # the parity tests' PyTorch definitions (this worker process only)
    module_name, class_name = BENCHES[spec["bench"]]["torch"]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**BENCHES[spec["bench"]]["torch_kwargs"](spec["config"]))


def torch_weights(spec: dict) -> None:
    """Seeded PyTorch initial weights of each network in ``spec['nets']``, saved as numpy state_dicts (.npz)."""
    import numpy as np
    import torch

    for net in spec["nets"]:
        torch.manual_seed(0)
        model = torch_model(net)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):  # default 1 / 0 / 0 / 1 would hide a mapping error
                    c = m.num_features
                    m.weight.copy_(0.5 + torch.rand(c, generator=g))
                    m.bias.copy_(0.1 * torch.randn(c, generator=g))
                    m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(c, generator=g))
        np.savez(net["out"], **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})


def torch_worker(spec_path: str) -> None:
    """One PyTorch round of one architecture and case: every requested variant on fresh copies of the same weights;
    the results as JSON to ``spec['out']``. (``spec['mode'] == 'weights'``: save the initial weights instead.)"""
    import numpy as np
    import torch
    import torch.nn.functional as F  # noqa: N812

    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if spec.get("mode") == "weights":
        torch_weights(spec)
        return
    weights = {k: torch.from_numpy(v) for k, v in np.load(spec["weights"]).items()}
    data = np.load(spec["inputs"])
    lo, hi = spec["value_range"]
    to_model = (lambda x: x) if (lo, hi) == (0.0, 1.0) else (lambda x: x * (hi - lo) + lo)
    from_model = (lambda y: y) if (lo, hi) == (0.0, 1.0) else (lambda y: (y - lo) / (hi - lo))

    def fresh(channels_last: bool, train: bool):
        model = torch_model(spec)
        model.load_state_dict(weights, strict=True)
        model.train(train)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def first_output(y):
        return y[0] if isinstance(y, tuple | list) else y  # SRGAN-PyTorch's generator returns (image, features)

    def train_call(model, forward, fmt, autocast):
        opt = torch.optim.Adam(model.parameters(), lr=2e-4, fused=spec["fused_adam"])
        to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float().div(255).contiguous(memory_format=fmt)  # noqa: E731
        lr, hr = to_t(data["lr"]), to_t(data["hr"])
        losses = []

        def call():
            with autocast():
                loss = F.l1_loss(first_output(forward(lr)).float(), hr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())  # the host reads the loss each step, as jsr's does

        return call, losses

    def infer_call(forward, fmt, autocast):
        image, saved = data["image"], []

        def call():
            with torch.inference_mode(), autocast():
                x = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).contiguous(memory_format=fmt)
                y = from_model(first_output(forward(to_model(x))).float()).clamp_(0.0, 1.0)
                out = y[0].permute(1, 2, 0).contiguous().numpy()
            if not saved:
                saved.append(out)

        return call, saved

    train = spec["case"] == "train"
    results, reference, failed = {}, None, {}
    for name in spec["variants"]:
        channels_last, compiled, bf16 = TORCH_VARIANTS[name]
        fmt = torch.channels_last if channels_last else torch.contiguous_format

        def autocast(enabled=bf16):
            return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)

        model = fresh(channels_last, train=train)
        forward = torch.compile(model) if compiled else model
        call, kept = train_call(model, forward, fmt, autocast) if train else infer_call(forward, fmt, autocast)
        try:
            result = timed_calls(call, True, spec["warmup"], spec["repeats"])
        except Exception as e:  # noqa: BLE001 - one variant failing (e.g. torch.compile) leaves the others' results
            lines = str(e).strip().splitlines() or [""]
            failed[name] = f"{type(e).__name__}: {lines[0][:500]}"
            print(f"torch variant {name} failed: {failed[name]}", file=sys.stderr, flush=True)
            del model, forward, call, kept
            torch._dynamo.reset()
            continue
        result["items"] = spec["batch"] if train else (spec["scale"] * data["image"].shape[0]) ** 2 / 1e6
        result |= {"dtype": "bfloat16" if bf16 else "float32", "peak_rss_mb_so_far": peak_rss_mb()}
        if train:
            result["first_loss"] = kept[0]
        else:
            result["first_output"] = kept[0]
            if name == "torch_eager":
                reference = kept[0]
                if spec.get("check_out"):
                    np.save(spec["check_out"], kept[0])
        results[name] = result
        del model, forward, call, kept
        if compiled:
            torch._dynamo.reset()
    for result in results.values():  # each variant's first output against eager float32's
        out = result.pop("first_output", None)
        if out is not None and reference is not None:
            result["max_abs_diff_vs_torch_eager"] = float(np.max(np.abs(out - reference)))
    versions = {
        "torch": torch.__version__,
        "torch_python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_mkldnn": torch.backends.mkldnn.is_available(),
        "numpy_torch_side": np.__version__,
    }
    Path(spec["out"]).write_text(json.dumps({"variants": results, "failed": failed, "versions": versions}))


def find_torch_python(explicit: str | None) -> str | None:
    """``--torch-python``, else $JSR_TORCH_PYTHON, else run.py's candidates (a Python that imports torch)."""
    return run.find_torch_python(explicit or os.environ.get("JSR_TORCH_PYTHON") or None)


def run_worker(python: str, spec: dict, path: Path, args, what: str) -> None:
    path.write_text(json.dumps(spec))
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(args.torch_compile_cache))
    if args.torch_compile_threads:  # 1: inductor compiles in the worker, no pool of processes nobody waits for
        env["TORCHINDUCTOR_COMPILE_THREADS"] = str(args.torch_compile_threads)
    done = subprocess.run(
        [python, str(Path(__file__).resolve()), "--torch-worker", str(path)], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"PyTorch worker failed for {what}:\n{done.stderr[-4000:]}")


# ------------------------------------------------------------------------------------------------ jsr side


def train_result_name(conv: str) -> str:
    return "jsr_fast" if conv == "fast" else f"jsr_train_{conv}"


class JsrSide:
    """One architecture's jsr variants of each case, built and compiled once, kept between rounds."""

    def __init__(self, args, name: str, config: dict, state: dict | None):
        import jax
        import jax.numpy as jnp

        from jsr import archs, parallel

        self.args, self.name, self.config = args, name, config
        self.arch = archs.get(BENCHES[name]["arch"])
        self.module = self.arch.build(config)
        if state is None:  # no PyTorch side: jsr's own init
            self.variables = jax.device_get(self.module.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))
            self.weights = "random (jsr Flax init, PRNGKey 0)"
        else:
            detected = self.arch.detect(state)
            if detected is None or normalised(detected) != normalised(config):
                raise AssertionError(f"{name}: {self.arch.name}.detect read {detected}, the benchmark built {config}")
            self.variables = self.arch.to_flax(state, config)
            self.weights = "random (PyTorch default init, seed 0; BatchNorm randomised), read by arch.to_flax"
        self.value_range = tuple(float(v) for v in archs.value_range(self.module))
        self.mesh = parallel.make_mesh(jax.local_devices()[:1])  # batch 1 on one device, whatever XLA_FLAGS say
        self.built: dict[str, list] = {}
        self.outputs: dict[str, object] = {}
        self.first_loss: dict[str, float] = {}
        self.failed: dict[str, str] = {}

    def default_infer_conv(self) -> str:
        from jsr.inference import Upscaler

        return Upscaler(self.module, self.variables, mesh=self.mesh).module.conv  # its 'auto'

    def build(self, case: str, spec: dict) -> list:
        if case in self.built:
            return self.built[case]
        if case == "train":
            self.built[case] = [self._train(spec, conv) for conv in self.args.train_convs]
        else:
            self.built[case] = [self._infer(spec, conv) for conv in ("xla", "winograd")]
        return self.built[case]

    def _infer(self, spec: dict, conv: str):
        from jsr.inference import Upscaler

        # --quick's tiny images would be padded to the default bucket (64): bucket 16 keeps the shapes equal
        bucket = {"bucket": 16} if self.args.quick else {}
        upscaler = Upscaler(self.module, self.variables, conv=conv, mesh=self.mesh, **bucket)
        image = spec["image"]
        name = f"jsr_{conv}"

        def call():
            out = upscaler.upscale(image)
            self.outputs.setdefault(f"{spec['case']}/{name}", out)

        return name, call, {"conv": conv, "canvases": None, "upscaler": upscaler}

    def _train(self, spec: dict, conv: str):
        import jax
        import ml_collections

        from jsr import data as jdata
        from jsr.train import build_generator, build_standard

        config_file, option_keys = BENCHES[self.name]["train"]
        start = time.perf_counter()
        loader = importlib.util.spec_from_file_location("jsr_benchmark_train_config", ROOT / "configs" / config_file)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        config = module.get_config()
        config.model.options = ml_collections.ConfigDict({k: self.config[k] for k in option_keys})
        config.batch_size, config.data.patch_size = spec["batch"], spec["patch"]
        config.data.augment.enabled = False  # the PyTorch side has none either
        config.model.conv = conv
        parts = build_standard(config, build_generator(config))
        # the same weights as the PyTorch side (Adam's moments are zeros of the same tree either way)
        state = parts.state.replace(g_params=jax.device_put(self.variables["params"]))
        frozen = jax.device_put(parts.frozen)
        batch = jax.device_put({"hr": spec["hr"], "lr": spec["lr"]})
        aug = jax.device_put(jdata.augment_params(config.data.augment, spec["batch"]))
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        compiled = parts.train_step.lower(state, batch, aug, frozen).compile()
        compile_s = time.perf_counter() - start
        holder = {"state": state}
        name = train_result_name(conv)

        def call():
            holder["state"], out = compiled(holder["state"], batch, aug, frozen)
            loss = float(out["g_loss"])  # the host reads a metric each step, as the training loop does
            self.first_loss.setdefault(name, loss / 2)  # jsr's L1 is in [-1, 1] units: 2x the [0, 1] L1

        return name, call, {"conv": conv, "build_s": build_s, "compile_s": compile_s}

    def run_round(self, case: str, spec: dict, round_index: int) -> dict:
        variants = self.build(case, spec)
        order = variants if round_index % 2 == 0 else variants[::-1]
        results = {}
        for name, call, info in order:
            first = "first_s" not in info  # the first call (compile) only once per process
            r = timed_calls(call, first, self.args.warmup, spec["repeats"])
            if first:
                info["first_s"] = r["first_s"]
            results[name] = {"times_s": r["times_s"], "items": spec["items"]}
        return results

    def details(self, case: str) -> dict:
        out = {}
        for name, _, info in self.built.get(case, []):
            d = {k: v for k, v in info.items() if k in ("conv", "build_s", "compile_s", "first_s")}
            if "upscaler" in info:
                d["canvases"] = sorted(info["upscaler"].compiled_shapes)
            out[name] = d
        return out


def normalised(config: dict) -> dict:
    """A config comparable across JSON / tuples / ints-as-floats."""
    out = {}
    for k, v in config.items():
        if isinstance(v, list | tuple):
            v = tuple(round(float(x), 6) for x in v)
        elif isinstance(v, float):
            v = round(v, 6)
        out[k] = v
    return out


# ------------------------------------------------------------------------------------------------ the run


def case_specs(args):
    import numpy as np

    rng = np.random.default_rng(0)
    side_64, side_128, batch, patch = (16, 32, 2, 8) if args.quick else (64, 128, 4, 32)
    specs = {}
    for case, side, repeats in (
        ("infer_64", side_64, args.repeats),
        ("infer_128", side_128, max(1, args.repeats - 1)),
    ):
        image = rng.random((side, side, 3), dtype=np.float32)
        specs[case] = {
            "case": case,
            "image": image,
            "items": (4 * side) ** 2 / 1e6,
            "repeats": repeats,
            "shape": f"1x{side}x{side}x3 -> 1x{4 * side}x{4 * side}x3",
            "unit": "output megapixels/s",
        }
    specs["train"] = {
        "case": "train",
        "batch": batch,
        "patch": patch,
        "lr": rng.integers(0, 256, (batch, patch, patch, 3), dtype=np.uint8),
        "hr": rng.integers(0, 256, (batch, 4 * patch, 4 * patch, 3), dtype=np.uint8),
        "items": batch,
        "repeats": args.train_repeats,
        "shape": f"batch {batch}, LR {patch} -> HR {4 * patch}, L1, Adam",
        "unit": "images/s",
    }
    return specs


def run_torch_round(args, python, jsr: JsrSide, case: str, spec: dict, round_index: int, work: Path, variants):
    import numpy as np

    if round_index % 2:
        variants = variants[::-1]
    inputs = work / f"{case}-inputs.npz"
    if not inputs.exists():
        if case == "train":
            np.savez(inputs, lr=spec["lr"], hr=spec["hr"])
        else:
            np.savez(inputs, image=spec["image"])
    tag = f"{jsr.name}-{case}-{round_index}"
    worker_spec = {
        "bench": jsr.name,
        "config": jsr.config,
        "value_range": jsr.value_range,
        "scale": jsr.module.scale,
        "case": case,
        "variants": variants,
        "warmup": args.warmup,
        "repeats": spec["repeats"],
        "batch": spec.get("batch"),
        "weights": str(work / f"{jsr.name}-weights.npz"),
        "inputs": str(inputs),
        "threads": args.torch_threads,
        "fused_adam": not args.no_fused_adam,
        "out": str(work / f"{tag}-torch.json"),
        "check_out": str(work / f"{jsr.name}-{case}-torch-eager-out.npy") if round_index == 0 else "",
    }
    run_worker(python, worker_spec, work / f"{tag}-spec.json", args, f"{jsr.name} {case} {tag}")
    return json.loads(Path(worker_spec["out"]).read_text())


def summarise_case(spec: dict, rounds: list[dict], jsr: JsrSide, torch_details: dict, case: str, default: str):
    """Medians over rounds, ratios, per-round ratios."""
    names = [n for n in rounds[0] if all(n in r for r in rounds)]  # a variant that failed in a round is left out
    variants = {}
    for name in names:
        times = [t for r in rounds for t in r[name]["times_s"]]
        med = statistics.median(times)
        items = rounds[0][name]["items"]
        v = {"label": LABELS[name], "side": "jsr" if name.startswith("jsr") else "torch"}
        v |= {"median_s": med, "throughput": items / med, "times_s": times}
        v |= {"dtype": rounds[0][name].get("dtype", "float32")}
        for key in ("first_loss", "max_abs_diff_vs_torch_eager"):
            if key in rounds[0][name]:
                v[key] = rounds[0][name][key]
        if name in torch_details:
            t = torch_details[name]
            v["first_s_per_round"] = t["first_s"]
            v["first_s"] = t["first_s"][0]
            v["compile_s"] = max(0.0, t["first_s"][0] - med)  # first call minus a steady one
            v["peak_rss_mb_so_far"] = t["peak_rss_mb_so_far"]
        v["round_medians_s"] = [statistics.median(r[name]["times_s"]) for r in rounds]
        variants[name] = v
    for name, d in jsr.details(case).items():
        variants[name] |= d
        if "compile_s" not in d:  # inference: first call minus a steady one
            variants[name]["compile_s"] = max(0.0, d["first_s"] - variants[name]["median_s"])
    row = {"unit": spec["unit"], "shape": spec["shape"], "rounds": len(rounds), "variants": variants}
    row["jsr_default"] = default
    jsr_names = [n for n in variants if n.startswith("jsr")]
    row["jsr_fastest"] = max(jsr_names, key=lambda n: variants[n]["throughput"])
    torch_f32 = [n for n in variants if n.startswith("torch") and variants[n]["dtype"] == "float32"]
    if torch_f32:
        thr = lambda n: variants[n]["throughput"]  # noqa: E731
        best = max(torch_f32, key=thr)
        fastest_any = max((n for n in variants if n.startswith("torch")), key=thr)
        row["torch_fastest_float32"] = best
        row["torch_fastest_any"] = fastest_any
        row["ratio_best_float32"] = thr(default) / thr(best)
        row["ratio_best_float32_jsr_fastest"] = thr(row["jsr_fastest"]) / thr(best)
        if "torch_eager" in variants:
            row["ratio_vs_eager"] = thr(default) / thr("torch_eager")
        row["ratio_vs_fastest_any"] = thr(default) / thr(fastest_any)
        row["round_ratios_best_float32"] = [
            variants[best]["round_medians_s"][r] / variants[default]["round_medians_s"][r] for r in range(len(rounds))
        ]
    return row


def task_order(names: list[str], cases: list[str], rounds: int) -> list[tuple[str, str, int, bool]]:
    """(arch, case, round, required) in priority order: the first round of infer_64 of every non-optional network and
    the first round of train always run; the rest while the budget allows."""
    main = [n for n in names if not BENCHES[n].get("optional")]
    optional = [n for n in names if BENCHES[n].get("optional")]
    trains = [n for n in names if "train" in BENCHES[n]] if "train" in cases else []
    infer_64 = "infer_64" in cases
    tasks = [(n, "infer_64", 0, True) for n in main if infer_64]
    tasks += [(n, "train", 0, True) for n in trains]
    tasks += [(n, "infer_64", 0, False) for n in optional if infer_64]
    tasks += [(n, "infer_64", r, False) for r in range(1, rounds) for n in names if infer_64]
    tasks += [(n, "infer_128", 0, False) for n in names if "infer_128" in cases]
    tasks += [(n, "train", r, False) for r in range(1, rounds) for n in trains]
    tasks += [(n, "infer_128", r, False) for r in range(1, rounds) for n in names if "infer_128" in cases]
    return tasks


def estimate_task(name: str, case: str, r: int, walls: dict, specs: dict, args) -> float:
    """Seconds a task should take, from the tasks already run (0 when there is nothing to go on): a later round
    repeats the first without jsr's build and compile; infer_128 is 4x infer_64's pixels; a network's first round
    not run yet is guessed as the slowest first round of the case so far."""
    if r > 0 and (name, case, 0) in walls:
        return max(0.0, walls[(name, case, 0)]["wall_s"] - walls[(name, case, 0)]["jsr_fixed_s"])
    if case == "infer_128" and (name, "infer_64", 0) in walls:
        w = walls[(name, "infer_64", 0)]
        fixed = w["jsr_fixed_s"] + w["torch_fixed_s"]
        calls = lambda s: s["repeats"] + args.warmup + 1  # noqa: E731
        steady = max(0.0, w["wall_s"] - fixed) * 4 * calls(specs["infer_128"]) / calls(specs["infer_64"])
        return steady + 1.2 * w["jsr_fixed_s"] + 1.5 * w["torch_fixed_s"]
    seen = [w["wall_s"] for (n, c, rr), w in walls.items() if c == case and rr == 0]
    return max(seen, default=0.0)


def select_archs(spec: str) -> list[str]:
    if spec in ("", "all"):
        return list(BENCHES)
    names = [n for n in spec.split(",") if n]
    for n in names:
        if n in SKIPPED:
            raise SystemExit(f"--arch {n}: not benchmarked: {SKIPPED[n]}")
        if n not in BENCHES:
            raise SystemExit(f"--arch {n}: unknown; choose from {', '.join(BENCHES)} (or all)")
    return names


def coverage() -> list[dict]:
    """Every registered generator is benchmarked or skipped with a reason (a new one fails loudly here)."""
    from jsr import archs

    measured = {b["arch"] for b in BENCHES.values()}
    out = []
    for name, arch in archs.REGISTRY.items():
        if arch.role != "generator" or name in measured:
            continue
        if name not in SKIPPED:
            raise SystemExit(f"registered generator {name!r} has no entry in benchmarks/archs.py's BENCHES or SKIPPED")
        out.append({"arch": name, "colour": arch.colour, "reason": SKIPPED[name]})
    return out


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process and its waited-for children)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        busy = float("nan")
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


def others_share(before: tuple[float, float], after: tuple[float, float], wall: float) -> float:
    """Other processes' share of the machine's CPU capacity between two ``cpu_seconds()`` (0 = it was ours alone)."""
    if wall < 2.0:  # clock ticks are 10 ms: too short a window to tell
        return 0.0
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, others) / (wall * (os.cpu_count() or 1))


def wait_quiet(args, limit_s: float) -> float:
    """Wait (up to ``limit_s``) until other processes take under ``--busy-share`` of the CPUs over 3 s; seconds
    waited."""
    start = time.perf_counter()
    announced = False
    while time.perf_counter() - start < limit_s:
        before, t0 = cpu_seconds(), time.perf_counter()
        time.sleep(3.0)
        share = others_share(before, cpu_seconds(), time.perf_counter() - t0)
        if not share > args.busy_share:
            break
        if not announced:
            print(f"waiting for a quiet machine: other processes take {share:.0%} of the CPUs", flush=True)
            announced = True
    return time.perf_counter() - start if announced else 0.0


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.torch_worker:
        torch_worker(args.torch_worker)
        return {}
    wall_start = time.perf_counter()
    names = select_archs(args.arch)
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown cases {sorted(unknown)}; choose from {CASES}")
    machine = run.machine_info()
    torch_python = None if args.no_torch else find_torch_python(args.torch_python)
    if not args.no_torch and torch_python is None:
        raise SystemExit("no Python with torch found: pass --torch-python (or set JSR_TORCH_PYTHON), or --no-torch")
    bf16 = {"auto": machine["bf16_dot_units"], "on": True, "off": False}[args.torch_bf16]
    variants = torch_variant_names(args.torch_variants, bf16)
    cache = Path(args.torch_compile_cache)
    cache_state = "warm" if cache.is_dir() and any(cache.iterdir()) else "cold"
    load_before = os.getloadavg()

    import jax
    import numpy as np

    from jsr.ops.conv import resolve_conv

    skipped_archs = coverage()
    work = Path(tempfile.mkdtemp(prefix="jsr-archs-bench-"))
    configs = {n: bench_config(n, args.quick) for n in names}
    states = dict.fromkeys(names)
    if torch_python:  # the PyTorch side's initial weights, once for every network
        nets = [{"bench": n, "config": configs[n], "out": str(work / f"{n}-weights.npz")} for n in names]
        start = time.perf_counter()
        run_worker(torch_python, {"mode": "weights", "nets": nets}, work / "weights-spec.json", args, "weights")
        print(f"PyTorch weights of {len(names)} networks: {time.perf_counter() - start:.0f} s", flush=True)
        states = {n: dict(np.load(work / f"{n}-weights.npz")) for n in names}
    sides = {n: JsrSide(args, n, configs[n], states[n]) for n in names}
    specs = case_specs(args)

    train_defaults = {
        n: resolve_conv("auto", jax.default_backend(), winograd_pays=s.arch.winograd_pays("float32"))
        for n, s in sides.items()
    }
    for conv in dict.fromkeys(train_defaults.values()):
        if conv not in args.train_convs:
            args.train_convs = [conv, *args.train_convs]
    infer_defaults = {n: f"jsr_{side.default_infer_conv()}" for n, side in sides.items()}

    rounds: dict[tuple[str, str], list[dict]] = {}
    torch_details: dict[tuple[str, str], dict] = {}
    walls: dict[tuple[str, str, int], dict] = {}
    skipped, failed, busy, torch_versions, waited = [], [], [], {}, 0.0
    for name, case, r, required in task_order(names, cases, args.rounds):
        key = (name, case)
        if r > 0 and len(rounds.get(key, [])) < r:
            continue  # an earlier round of this case was skipped or failed
        estimate = estimate_task(name, case, r, walls, specs, args)
        elapsed = time.perf_counter() - wall_start - waited  # waiting for a quiet machine is not measuring
        if not required and not args.quick and elapsed + estimate > args.budget_s:
            skipped.append(
                {
                    "arch": name,
                    "case": case,
                    "round": r + 1,
                    "estimated_s": round(estimate, 1),
                    "elapsed_s": round(elapsed, 1),
                }
            )
            print(
                f"skip {name} {case} round {r + 1}: estimated {estimate:.0f} s, {elapsed:.0f} of {args.budget_s} s used"
            )
            continue
        jsr, spec = sides[name], specs[case]
        for attempt in range(1 + max(0, args.retry_busy)):
            waited += wait_quiet(args, max(0.0, args.wait_quiet_s - waited))
            start, cpu_before = time.perf_counter(), cpu_seconds()
            torch_first = r % 2 == 1 and torch_python is not None
            try:
                torch_result = None
                if torch_first:
                    torch_result = run_torch_round(args, torch_python, jsr, case, spec, r, work, variants)
                mid = time.perf_counter()
                jsr_result = jsr.run_round(case, spec, r)
                jsr_s = time.perf_counter() - mid
                if torch_python and not torch_first:
                    torch_result = run_torch_round(args, torch_python, jsr, case, spec, r, work, variants)
            except Exception as e:  # noqa: BLE001 - one network's failure is recorded; the others still run
                failed.append({"arch": name, "case": case, "round": r + 1, "error": f"{type(e).__name__}: {e}"[-3000:]})
                print(f"FAILED {name} {case} round {r + 1}: {type(e).__name__}: {str(e)[-1500:]}", flush=True)
                torch_result = jsr_result = None
                break
            wall = time.perf_counter() - start
            others = others_share(cpu_before, cpu_seconds(), wall)
            fits = time.perf_counter() - wall_start - waited + wall <= args.budget_s or args.quick
            if others > args.busy_share and attempt < args.retry_busy and fits:
                busy.append({"arch": name, "case": case, "round": r + 1, "others_cpu_share": round(others, 3)})
                print(f"{name} {case} round {r + 1}: other processes took {others:.0%} of the CPUs: again", flush=True)
                continue
            break
        if jsr_result is None:
            continue
        merged = dict(jsr_result)
        torch_fixed = 0.0
        if torch_result:
            torch_versions = torch_result["versions"]
            for vname, error in torch_result.get("failed", {}).items():
                failed.append({"arch": name, "case": case, "round": r + 1, "variant": vname, "error": error})
            for vname, t in torch_result["variants"].items():
                merged[vname] = t
                d = torch_details.setdefault(key, {}).setdefault(vname, {"first_s": []})
                d["first_s"].append(t["first_s"])
                d["peak_rss_mb_so_far"] = t["peak_rss_mb_so_far"]
                torch_fixed += t["first_s"] - statistics.median(t["times_s"])
        jsr_fixed = sum(
            info.get("build_s", 0.0) + info.get("compile_s", 0.0) + info.get("first_s", 0.0)
            for _, _, info in jsr.built.get(case, [])
        )
        w = {"wall_s": wall, "jsr_s": jsr_s, "jsr_fixed_s": jsr_fixed if r == 0 else 0.0}
        w |= {"torch_fixed_s": torch_fixed, "estimated_s": estimate, "started_at_s": start - wall_start}
        w |= {"others_cpu_share": others, "attempts": attempt + 1}  # others: CPU time of other processes / capacity
        walls[(name, case, r)] = w
        rounds.setdefault(key, []).append(merged)
        print(
            f"{name} {case} round {r + 1}: {wall:.0f} s (at {time.perf_counter() - wall_start:.0f} s; "
            f"other processes {others:.0%} of the CPUs)",
            flush=True,
        )

    results = {}
    for name in names:
        jsr = sides[name]
        arch_cases = {}
        for case in cases:
            if case == "train" and "train" not in BENCHES[name]:
                continue
            key = (name, case)
            if not rounds.get(key):
                arch_cases[case] = {"skipped": "time budget or failure", "shape": specs[case]["shape"]}
                continue
            default = train_result_name(train_defaults[name]) if case == "train" else infer_defaults[name]
            arch_cases[case] = summarise_case(specs[case], rounds[key], jsr, torch_details.get(key, {}), case, default)
            arch_cases[case]["round_walls_s"] = [walls[(name, case, r)]["wall_s"] for r in range(len(rounds[key]))]
        results[name] = {
            "network": {
                "arch": jsr.arch.name,
                "released": BENCHES[name]["released"],
                "config": {k: list(x) if isinstance(x, tuple) else x for k, x in jsr.config.items()},
                "torch_definition": "tests/{}.py: {}".format(*BENCHES[name]["torch"]),
                "value_range": list(jsr.value_range),
                "exact_tiling": jsr.arch.exact_tiling,
                "jsr_default_infer_conv": infer_defaults[name].removeprefix("jsr_"),
                "weights": jsr.weights,
                **({"quick": BENCHES[name]["quick"]} if args.quick else {}),
                "parameters": int(sum(np.size(x) for x in jax.tree.leaves(jsr.variables.get("params", {})))),
            },
            "cases": arch_cases,
            "checks": consistency_checks(jsr, work, arch_cases),
        }
    report = {
        "benchmark": "benchmarks/archs.py",
        "command": " ".join(
            [Path(sys.executable).name, "benchmarks/archs.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": machine,
        "versions": versions(torch_versions),
        "settings": {
            "archs": names,
            "cases": cases,
            "quick": args.quick,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "repeats_infer_64": specs["infer_64"]["repeats"],
            "repeats_infer_128": specs["infer_128"]["repeats"],
            "repeats_train": specs["train"]["repeats"],
            "budget_s": args.budget_s,
            "train_convs": args.train_convs,
            "torch_variants": variants if torch_python else [],
            "torch_bf16": bf16,
            "torch_adam": "Adam(lr=2e-4, fused=True)" if not args.no_fused_adam else "Adam(lr=2e-4)",
            "torch_compile_cache": str(cache),
            "torch_compile_cache_before_run": cache_state,
            "torch_compile_threads": args.torch_compile_threads or "PyTorch's default",
            "nice": os.nice(0),
            "busy_share": args.busy_share,
            "retry_busy": args.retry_busy,
            "wait_quiet_s": args.wait_quiet_s,
        },
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "skipped_archs": skipped_archs,
        "skipped": skipped,
        "failed": failed,
        "repeated_busy": busy,
        "waited_for_quiet_s": waited,
        "tasks": [
            {"arch": n, "case": c, "round": r + 1, **{k: round(x, 3) for k, x in w.items()}}
            for (n, c, r), w in walls.items()
        ],
        "archs": results,
        "wall_s": time.perf_counter() - wall_start,
    }
    report["summary"] = summary_rows(report)
    table = format_table(report)
    report["table_markdown"] = table
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return report


def torch_variant_names(spec: str, bf16: bool) -> list[str]:
    possible = [v for v, (_, _, b) in TORCH_VARIANTS.items() if bf16 or not b]
    if not spec:
        return possible
    names = [v if v.startswith("torch_") else f"torch_{v}" for v in spec.split(",") if v]
    bad = [v for v in names if v not in possible]
    if bad:
        raise SystemExit(f"--torch-variants: {bad} not among {possible}")
    return names


def consistency_checks(jsr: JsrSide, work: Path, cases: dict) -> dict:
    """The same network and weights on both sides: output and first-loss differences."""
    import numpy as np

    checks = {}
    for case in ("infer_64", "infer_128"):
        ref_path = work / f"{jsr.name}-{case}-torch-eager-out.npy"
        if ref_path.exists():
            ref = np.load(ref_path)
            checks[f"{case}_torch_eager_output_std"] = float(np.std(ref))  # a flat output would compare trivially
            for name in ("jsr_xla", "jsr_winograd"):
                out = jsr.outputs.get(f"{case}/{name}")
                if out is not None:
                    checks[f"{case}_max_abs_diff_{name}_vs_torch_eager"] = float(np.max(np.abs(out - ref)))
        for name, v in cases.get(case, {}).get("variants", {}).items():
            if name != "torch_eager" and "max_abs_diff_vs_torch_eager" in v:
                checks[f"{case}_max_abs_diff_{name}_vs_torch_eager"] = v["max_abs_diff_vs_torch_eager"]
    train = cases.get("train", {}).get("variants", {})
    if "torch_eager" in train:
        checks["train_first_l1_torch_eager"] = train["torch_eager"].get("first_loss")
    for name, loss in jsr.first_loss.items():
        checks[f"train_first_l1_{name}"] = loss
    return checks


def versions(torch_versions: dict) -> dict:
    import flax
    import jax
    import jaxlib
    import numpy as np
    import optax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "jax_devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        **torch_versions,
    }


# ------------------------------------------------------------------------------------------------ report


def summary_rows(report: dict) -> list[dict]:
    """One row per network and case run: the numbers the README's table needs."""
    rows = []
    for name, a in report["archs"].items():
        for case, c in a["cases"].items():
            if "variants" not in c:
                continue
            v = c["variants"]
            row = {"arch": name, "case": case, "shape": c["shape"], "unit": c["unit"]}
            row |= {"jsr_default": c["jsr_default"], "jsr_default_ms": 1e3 * v[c["jsr_default"]]["median_s"]}
            row |= {"jsr_fastest": c["jsr_fastest"], "jsr_fastest_ms": 1e3 * v[c["jsr_fastest"]]["median_s"]}
            if "torch_fastest_float32" in c:
                best = c["torch_fastest_float32"]
                row |= {"torch_fastest_float32": best, "torch_fastest_float32_ms": 1e3 * v[best]["median_s"]}
                if "torch_eager" in v:
                    row["torch_eager_ms"] = 1e3 * v["torch_eager"]["median_s"]
                bf16 = [n for n in v if v[n]["side"] == "torch" and v[n]["dtype"] == "bfloat16"]
                if bf16:
                    fastest = min(bf16, key=lambda n: v[n]["median_s"])
                    row |= {"torch_bf16_fastest": fastest, "torch_bf16_fastest_ms": 1e3 * v[fastest]["median_s"]}
                for k in ("ratio_best_float32", "ratio_best_float32_jsr_fastest", "ratio_vs_eager"):
                    if k in c:
                        row[k] = c[k]
                row["ratio_vs_fastest_any"] = c["ratio_vs_fastest_any"]
                row["torch_fastest_any"] = c["torch_fastest_any"]
            for side in ("jsr_xla", "jsr_winograd"):
                diff = a["checks"].get(f"{case}_max_abs_diff_{side}_vs_torch_eager")
                if diff is not None:
                    row[f"max_abs_diff_{side}"] = diff
            rows.append(row)
    return rows


SHORT = {
    "jsr_xla": "xla",
    "jsr_winograd": "winograd",
    "jsr_fast": "fast",
    "jsr_train_xla": "xla",
    "jsr_train_winograd": "winograd",
    "torch_eager": "eager",
    "torch_channels_last": "channels_last",
    "torch_compile": "compile",
    "torch_channels_last_compile": "channels_last+compile",
    "torch_bf16": "bf16",
    "torch_channels_last_bf16": "channels_last+bf16",
}


def format_summary(report: dict) -> list[str]:
    lines = [
        "ms per call (median); ratios are throughputs, jsr / PyTorch (above 1: jsr faster); "
        "diff: max |jsr - torch eager| of the [0, 1] output (xla / winograd)",
        "",
        "| network | case | jsr default | jsr fastest | fastest torch f32 | torch eager f32 | fastest torch bf16 | "
        "default / fastest f32 | fastest / fastest f32 | default / eager | default / fastest any | diff |",
        "|---" * 12 + "|",
    ]
    for row in report["summary"]:

        def ms(key, name_key=None, row=row):
            if key not in row:
                return "—"
            return fmt_s(row[key] / 1e3) + (f" ({SHORT[row[name_key]]})" if name_key else "")

        ratio = lambda k, row=row: f"{row[k]:.2f}x" if k in row else "—"  # noqa: E731
        diffs = [f"{row[k]:.1e}" for k in ("max_abs_diff_jsr_xla", "max_abs_diff_jsr_winograd") if k in row]
        lines.append(
            f"| {row['arch']} | {row['case']} | {ms('jsr_default_ms', 'jsr_default')} | "
            f"{ms('jsr_fastest_ms', 'jsr_fastest')} | {ms('torch_fastest_float32_ms', 'torch_fastest_float32')} | "
            f"{ms('torch_eager_ms')} | {ms('torch_bf16_fastest_ms', 'torch_bf16_fastest')} | "
            f"{ratio('ratio_best_float32')} | {ratio('ratio_best_float32_jsr_fastest')} | {ratio('ratio_vs_eager')} | "
            f"{ratio('ratio_vs_fastest_any')} | {' / '.join(diffs) or '—'} |"
        )
    return lines


def format_arch(name: str, a: dict) -> list[str]:
    """One network's variants x cases, medians and compile / first-call seconds."""
    cases = a["cases"]
    ran = [c for c in cases if "variants" in cases[c]]
    if not ran:
        return [f"{name}: nothing ran"]
    size = a["network"]["released"] + (f"; --quick: {a['network']['quick']}" if "quick" in a["network"] else "")
    lines = [f"{name}: {size} ({a['network']['parameters'] / 1e6:.3g} M parameters)", ""]
    lines += ["| variant | " + " | ".join(f"{c}: {cases[c]['shape']}" for c in ran) + " | compile / first call s |"]
    lines += ["|---" * (len(ran) + 2) + "|"]
    names = []
    for c in ran:
        names += [n for n in cases[c]["variants"] if n not in names]
    names.sort(key=lambda n: (not n.startswith("jsr"), list(LABELS).index(n)))
    for n in names:
        cells, compiles = [], []
        for c in ran:
            var = cases[c]["variants"].get(n)
            if var is None:
                cells.append("—")
                continue
            unit = "MP/s" if cases[c]["unit"].startswith("output") else "img/s"
            mark = "**" if n in (cases[c].get("torch_fastest_float32"), cases[c].get("jsr_default")) else ""
            cells.append(f"{mark}{fmt_s(var['median_s'])}{mark} ({var['throughput']:.3g} {unit})")
            compiles.append(f"{var.get('compile_s', 0):.1f}")
        lines.append(f"| {LABELS[n]} | " + " | ".join(cells) + f" | {' / '.join(compiles)} |")
    return lines


def format_table(report: dict) -> str:
    m, v = report["machine"], report["versions"]
    flags = ", ".join(f for f, on in m["flags_of_interest"].items() if on and f.startswith(("avx512_bf16", "amx")))
    lines = [
        f"machine: {m['model_name']} (family/model/stepping {m['family_model_stepping']}), {m['cores']} cores, "
        f"bf16 dot units: {flags or 'none'}",
        f"jax {v['jax']} (Python {v['python']})"
        + (f"; torch {v['torch']} (Python {v['torch_python']}, {v['torch_threads']} threads)" if "torch" in v else "")
        + f"; torch.compile cache before the run: {report['settings']['torch_compile_cache_before_run']}",
        "",
    ]
    lines += format_summary(report)
    for name, a in report["archs"].items():
        lines += [""] + format_arch(name, a)
    for s in report["skipped_archs"]:
        lines.append(f"\nnot measured: {s['arch']}: {s['reason']}")
    for s in report["skipped"]:
        lines.append(f"\nskipped {s['arch']} {s['case']} round {s['round']}: estimated {s['estimated_s']} s")
        lines[-1] += f" at {s['elapsed_s']} s"
    busy = [t for t in report["tasks"] if t.get("others_cpu_share", 0) > report["settings"]["busy_share"]]
    for t in busy:
        lines.append(f"\nbusy machine: {t['arch']} {t['case']} round {t['round']}: other processes took")
        lines[-1] += f" {t['others_cpu_share']:.0%} of the CPUs (after {t['attempts']} attempt(s))"
    for f in report["failed"]:
        what = f" {f['variant']}" if "variant" in f else ""
        lines.append(f"\nFAILED {f['arch']} {f['case']} round {f['round']}{what}: {f['error'][-300:]}")
    lines.append(f"\nwall {report['wall_s']:.0f} s")
    return "\n".join(lines)


def fmt_s(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3g} ms" if ms < 100 else f"{ms:,.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--arch", default="all", help=f"comma-separated subset of {','.join(BENCHES)} (default all)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--quick", action="store_true", help="tiny networks on tiny shapes, no budget: a smoke run")
    p.add_argument("--rounds", type=int, default=2, help="ABBA rounds per case (the later ones while time allows)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after the first (compiling) call")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per variant and round, infer_64 (128: one less)")
    p.add_argument("--train-repeats", type=int, default=2, help="timed train steps per variant and round")
    p.add_argument("--budget-s", type=float, default=1200.0, help="optional tasks run while the estimate fits this")
    p.add_argument(
        "--train-convs", default="", help="more jsr conv paths of the train step (comma-separated; each net's own runs)"
    )
    p.add_argument("--torch-python", help="a Python that imports torch (default: $JSR_TORCH_PYTHON)")
    p.add_argument("--no-torch", action="store_true", help="jsr side only")
    p.add_argument(
        "--torch-variants",
        default="",
        help=f"comma-separated subset of {','.join(TORCH_VARIANTS)} ('torch_' optional; default: all, the bf16 ones "
        "where the CPU has bf16 units)",
    )
    p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0 = PyTorch's default)")
    p.add_argument("--torch-bf16", default="auto", choices=["auto", "on", "off"], help="auto: if the CPU has bf16 dots")
    p.add_argument("--no-fused-adam", action="store_true", help="torch.optim.Adam's default for-loop step")
    p.add_argument(
        "--torch-compile-cache",
        default=str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jsr-benchmarks" / "inductor"),
        help="TORCHINDUCTOR_CACHE_DIR of the PyTorch side",
    )
    p.add_argument(
        "--busy-share",
        type=float,
        default=0.15,
        help="other processes' share of the CPUs above which the machine counts as busy",
    )
    p.add_argument("--retry-busy", type=int, default=0, help="repeat a task this often when the machine was busy")
    p.add_argument(
        "--wait-quiet-s",
        type=float,
        default=0.0,
        help="before each task, wait up to this (in all, not counted in --budget-s) for a quiet machine",
    )
    p.add_argument(
        "--torch-compile-threads",
        type=int,
        default=1,
        help="TORCHINDUCTOR_COMPILE_THREADS of the PyTorch side (1: inductor compiles in the worker itself, so that "
        "its CPU time counts as this run's, not as another process's; only torch.compile's first call depends on "
        "it; 0 = PyTorch's default pool)",
    )
    p.add_argument("--torch-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.train_convs = [c for c in args.train_convs.split(",") if c]
    args.rounds, args.warmup = max(1, args.rounds), max(0, args.warmup)
    if args.quick:
        args.repeats, args.train_repeats = min(args.repeats, 2), min(args.train_repeats, 2)
    return args


if __name__ == "__main__":
    main()
