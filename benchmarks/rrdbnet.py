"""RRDBNet x4 (Real-ESRGAN x4plus size) on CPU: jsr against every PyTorch variant a speed-minded user would run, in
one run, on the same weights and shapes.

    /work/venv312/bin/python benchmarks/rrdbnet.py --torch-python /work/venv311/bin/python --json out.json
        [--quick] [--no-torch] [--rounds 2] [--budget-s 450] [--repeats 3] [--train-repeats 2] [--warmup 1]

Network: ``RRDBNet(3, 3, scale=4, num_feat=64, num_block=23, num_grow_ch=32)`` (RealESRGAN_x4plus's size), random
weights from jsr's Flax init (PRNGKey 0), copied into BasicSR's PyTorch definition (``tests/torch_archs_rrdb_edsr.py``,
by the converter's own key table read backwards): the same weights on both sides, checked by comparing outputs and
first losses.

Cases (``--quick``: a 1-block x 8-feature network on tiny shapes, a smoke run):
  infer_64    one 64x64 RGB image -> 256x256, batch 1: output megapixels/s
  train       one train step, batch 4, LR 32 px (HR 128), L1 loss, Adam(2e-4): images/s
  infer_128   one 128x128 image -> 512x512: output megapixels/s (only if the time budget allows)
Variants:
  jsr (this process, float32): inference through ``jsr.inference.Upscaler(module, variables, conv=...)`` with
    conv='xla' and conv='winograd' (its 'auto' on a CPU in float32), whole image, result on the host as numpy;
    training by THE REAL TRAINER'S STEP: ``jsr.train.build_standard`` on ``configs/esrgan_psnr.py`` (RRDBNet, L1,
    Adam 2e-4) at batch 4, augmentation off, conv='fast' (the trainer's CPU default; ``--train-convs fast,xla``
    adds XLA's), the state donated, the host reading the loss each step.
  PyTorch (a subprocess of ``--torch-python``, this same file with ``--torch-worker``): eager NCHW float32,
    channels_last float32, torch.compile (default mode) float32, channels_last + torch.compile float32, and where
    the CPU has bf16 dot units (AVX512_BF16 / AMX flags) autocast bfloat16 and channels_last + autocast bfloat16.
    Inference under ``torch.inference_mode()`` from the same HWC numpy image to a clamped HWC numpy result; training
    ``model(lr)``, ``F.l1_loss``, backward, ``Adam(lr=2e-4, fused=True)`` step, ``loss.item()``.
Method: per round and case, the jsr side then the PyTorch side (round 2: PyTorch first: ABBA), each variant timed
as one first call (compile for jsr and torch.compile: reported apart as ``first_s`` / ``compile_s``), ``--warmup``
untimed calls, then ``--repeats`` timed calls (train: ``--train-repeats``); variants run in reverse order in the
second round; medians over all rounds' repetitions; per-round ratios reported. jsr keeps its compiled programs
between rounds (compile is paid once per process); each PyTorch round is a fresh process, so its torch.compile
first call is paid again, against the inductor cache (``--torch-compile-cache``; its cold / warm state before the
run is recorded: a cold cache costs ~1 min per compiled variant here). Tasks beyond the first round of infer_64
and train run only while the estimated end stays within ``--budget-s``; skipped ones are listed with the reason.
Ratios: ``ratio_best_float32`` = jsr's default path (Upscaler 'auto' / trainer 'auto') over the fastest PyTorch
float32 variant (named), ``ratio_best_float32_jsr_fastest`` for jsr's faster path, ``ratio_vs_eager`` against
eager NCHW float32, and ``ratio_vs_fastest_any`` against the fastest PyTorch variant of any precision (bf16 too).
"""

from __future__ import annotations

import argparse
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
CASES = ("infer_64", "train", "infer_128")
FULL_NET = {"num_feat": 64, "num_block": 23, "num_grow_ch": 32}
QUICK_NET = {"num_feat": 8, "num_block": 1, "num_grow_ch": 4}
# name -> (channels_last, torch.compile, autocast bfloat16)
TORCH_VARIANTS = {
    "torch_eager": (False, False, False),
    "torch_channels_last": (True, False, False),
    "torch_compile": (False, True, False),
    "torch_channels_last_compile": (True, True, False),
    "torch_bf16": (False, False, True),
    "torch_channels_last_bf16": (True, False, True),
}
LABELS = {
    "jsr_xla": "jsr float32, conv=xla",
    "jsr_winograd": "jsr float32, conv=winograd",
    "jsr_fast": "jsr float32, conv=fast (real trainer step)",
    "jsr_train_xla": "jsr float32, conv=xla (real trainer step)",
    "torch_eager": "torch eager NCHW float32",
    "torch_channels_last": "torch channels_last float32",
    "torch_compile": "torch.compile float32",
    "torch_channels_last_compile": "torch channels_last + compile float32",
    "torch_bf16": "torch autocast bfloat16",
    "torch_channels_last_bf16": "torch channels_last + autocast bfloat16",
}
FLAGS_OF_INTEREST = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def timed_calls(fn, first: bool, warmup: int, repeats: int) -> dict:
    """``first``: one timed first call (compile); then ``warmup`` untimed calls and ``repeats`` timed ones."""
    out = {}
    if first:
        start = time.perf_counter()
        fn()
        out["first_s"] = time.perf_counter() - start
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    out["times_s"] = times
    return out


# --------------------------------------------------------------------------------------------- the machine


def machine_info() -> dict:
    fields = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    flags = set(fields.get("Flags", "").split())
    if not flags:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
        except OSError:
            pass
    model = fields.get("Model name") or platform.processor() or platform.machine()
    return {
        "model_name": model,
        "vendor": fields.get("Vendor ID", ""),
        "family_model_stepping": "/".join(fields.get(k, "?") for k in ("CPU family", "Model", "Stepping")),
        "hypervisor": fields.get("Hypervisor vendor", ""),
        "cores": os.cpu_count(),
        "flags_of_interest": {f: f in flags for f in FLAGS_OF_INTEREST},
        "bf16_dot_units": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "system": platform.system(),
    }


# ------------------------------------------------------------------------------------------ PyTorch worker


def torch_worker(spec_path: str) -> None:
    """One PyTorch round of one case: every requested variant on fresh copies of the same weights; the results as
    JSON to ``spec['out']``."""
    import numpy as np
    import torch
    import torch.nn.functional as F  # noqa: N812

    sys.path.insert(0, str(ROOT / "tests"))
    from torch_archs_rrdb_edsr import RRDBNet  # BasicSR's definition (the parity tests' reference)

    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    net = spec["net"]
    weights = {k: torch.from_numpy(v) for k, v in np.load(spec["weights"]).items()}
    data = np.load(spec["inputs"])

    def fresh(channels_last: bool, train: bool):
        model = RRDBNet(3, 3, 4, net["num_feat"], net["num_block"], net["num_grow_ch"])
        model.load_state_dict(weights, strict=True)
        model.train(train)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def train_call(model, forward, fmt, autocast):
        opt = torch.optim.Adam(model.parameters(), lr=2e-4, fused=spec["fused_adam"])
        to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float().div(255).contiguous(memory_format=fmt)  # noqa: E731
        lr, hr = to_t(data["lr"]), to_t(data["hr"])
        losses = []

        def call():
            with autocast():
                loss = F.l1_loss(forward(lr).float(), hr)
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
                y = forward(x).float().clamp_(0.0, 1.0)
                out = y[0].permute(1, 2, 0).contiguous().numpy()
            if not saved:
                saved.append(out)

        return call, saved

    train = spec["case"] == "train"
    results = {}
    for name in spec["variants"]:
        channels_last, compiled, bf16 = TORCH_VARIANTS[name]
        fmt = torch.channels_last if channels_last else torch.contiguous_format

        def autocast(enabled=bf16):
            return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)

        model = fresh(channels_last, train=train)
        forward = torch.compile(model) if compiled else model
        call, kept = train_call(model, forward, fmt, autocast) if train else infer_call(forward, fmt, autocast)
        result = timed_calls(call, True, spec["warmup"], spec["repeats"])
        result["items"] = spec["batch"] if train else (4 * data["image"].shape[0]) ** 2 / 1e6
        result |= {"dtype": "bfloat16" if bf16 else "float32", "peak_rss_mb_so_far": peak_rss_mb()}
        if train:
            result["first_loss"] = kept[0]
        elif name == "torch_eager" and spec.get("check_out"):
            np.save(spec["check_out"], kept[0])
        results[name] = result
        del model, forward, call, kept
        if compiled:
            torch._dynamo.reset()
    versions = {
        "torch": torch.__version__,
        "torch_python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_mkldnn": torch.backends.mkldnn.is_available(),
        "numpy_torch_side": np.__version__,
    }
    Path(spec["out"]).write_text(json.dumps({"variants": results, "versions": versions}))


def find_torch_python(explicit: str | None) -> str | None:
    candidates = [explicit] if explicit else [os.environ.get("JSR_TORCH_PYTHON", ""), "/tmp/v311/bin/python"]
    for exe in candidates:
        if exe and Path(exe).exists():
            if subprocess.run([exe, "-c", "import torch"], capture_output=True).returncode == 0:
                return exe
            if explicit:
                raise SystemExit(f"--torch-python {exe} cannot import torch")
    return None


# ------------------------------------------------------------------------------------------------ jsr side


class JsrSide:
    """The jsr variants of each case, built and compiled once, kept between rounds."""

    def __init__(self, args, net: dict):
        import jax
        import jax.numpy as jnp

        from jsr import parallel
        from jsr.archs.rrdbnet import RRDBNet

        self.args, self.net = args, net
        self.module = RRDBNet(3, 3, 4, **net)
        self.variables = jax.device_get(self.module.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))
        self.mesh = parallel.make_mesh(jax.local_devices()[:1])  # batch 1 on one device, whatever XLA_FLAGS say
        self.built: dict[str, list] = {}
        self.outputs: dict[str, object] = {}
        self.first_loss: dict[str, float] = {}

    def torch_state_dict(self) -> dict:
        """The Flax variables as BasicSR's state_dict (numpy), through the converter's key table backwards."""
        import numpy as np

        from jsr.archs.rrdbnet import targets

        out = {}
        for key, target in targets(3, 3, 4, layout="basicsr", **self.net).items():
            a = self.variables[target.collection]
            for name in target.path:
                a = a[name]
            a = np.asarray(a, np.float32)
            if a.ndim == 4:
                a = a.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            if a.shape != target.shape:
                raise AssertionError(f"{key}: {a.shape} != {target.shape}")
            out[key] = np.ascontiguousarray(a)
        return out

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
        import importlib.util

        import jax
        import ml_collections

        from jsr import data as jdata
        from jsr.train import build_generator, build_standard

        start = time.perf_counter()
        loader = importlib.util.spec_from_file_location("jsr_config_esrgan_psnr", ROOT / "configs" / "esrgan_psnr.py")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        config = module.get_config()
        config.model.options = ml_collections.ConfigDict(dict(self.net))
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
        name = "jsr_fast" if conv == "fast" else f"jsr_train_{conv}"

        def call():
            holder["state"], out = compiled(holder["state"], batch, aug, frozen)
            loss = float(out["g_loss"])  # the host reads a metric each step, as the training loop does
            self.first_loss.setdefault(name, loss / 2)  # jsr's L1 is in [-1, 1] units: 2x the [0, 1] L1

        return name, call, {"conv": conv, "build_s": build_s, "compile_s": compile_s}

    def run_round(self, case: str, spec: dict, round_index: int) -> dict:
        variants = self.build(case, spec)
        order = variants if round_index % 2 == 0 else variants[::-1]
        repeats = spec["repeats"]
        results = {}
        for name, call, info in order:
            first = "first_s" not in info  # the first call (compile) only once per process
            r = timed_calls(call, first, self.args.warmup, repeats)
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


# ------------------------------------------------------------------------------------------------ the run


def case_specs(args, net: dict):
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


def run_torch_round(args, python: str, case: str, spec: dict, round_index: int, work: Path, weights: Path, bf16):
    import numpy as np

    variants = [v for v, (_, _, b) in TORCH_VARIANTS.items() if bf16 or not b]
    if round_index % 2:
        variants = variants[::-1]
    inputs = work / f"{case}-inputs.npz"
    if not inputs.exists():
        if case == "train":
            np.savez(inputs, lr=spec["lr"], hr=spec["hr"])
        else:
            np.savez(inputs, image=spec["image"])
    worker_spec = {
        "case": case,
        "variants": variants,
        "warmup": args.warmup,
        "repeats": spec["repeats"],
        "net": spec["net"],
        "batch": spec.get("batch"),
        "weights": str(weights),
        "inputs": str(inputs),
        "threads": args.torch_threads,
        "fused_adam": not args.no_fused_adam,
        "out": str(work / f"{case}-torch-{round_index}.json"),
        "check_out": str(work / "infer_64-torch-eager-out.npy") if (case, round_index) == ("infer_64", 0) else "",
    }
    spec_path = work / f"{case}-spec-{round_index}.json"
    spec_path.write_text(json.dumps(worker_spec))
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(args.torch_compile_cache))
    done = subprocess.run(
        [python, str(Path(__file__).resolve()), "--torch-worker", str(spec_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"PyTorch worker failed for {case} round {round_index}:\n{done.stderr[-4000:]}")
    return json.loads(Path(worker_spec["out"]).read_text())


def summarise_case(case: str, spec: dict, rounds: list[dict], jsr: JsrSide, torch_details: dict, default: str):
    """Medians over rounds, ratios, per-round ratios."""
    names = list(rounds[0])
    variants = {}
    for name in names:
        times = [t for r in rounds for t in r[name]["times_s"]]
        med = statistics.median(times)
        items = rounds[0][name]["items"]
        v = {"label": LABELS[name], "side": "jsr" if name.startswith("jsr") else "torch"}
        v |= {"median_s": med, "throughput": items / med, "times_s": times}
        v |= {"dtype": rounds[0][name].get("dtype", "float32")}
        if "first_loss" in rounds[0][name]:
            v["first_loss"] = rounds[0][name]["first_loss"]
        if name in torch_details:
            t = torch_details[name]
            v["first_s_per_round"] = t["first_s"]
            v["first_s"] = t["first_s"][0]
            v["compile_s"] = max(0.0, t["first_s"][0] - med)  # first call minus a steady one
            v["peak_rss_mb_so_far"] = t["peak_rss_mb_so_far"]
        v["round_medians_s"] = [statistics.median(r[name]["times_s"]) for r in rounds]
        variants[name] = v
    jd = jsr.details(case)
    for name, d in jd.items():
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
        row["ratio_vs_eager"] = thr(default) / thr("torch_eager")
        row["ratio_vs_fastest_any"] = thr(default) / thr(fastest_any)
        row["round_ratios_best_float32"] = [
            variants[best]["round_medians_s"][r] / variants[default]["round_medians_s"][r] for r in range(len(rounds))
        ]
    return row


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.torch_worker:
        torch_worker(args.torch_worker)
        return {}
    wall_start = time.perf_counter()
    machine = machine_info()
    torch_python = None if args.no_torch else find_torch_python(args.torch_python)
    if not args.no_torch and torch_python is None:
        raise SystemExit("no Python with torch found: pass --torch-python (or set JSR_TORCH_PYTHON), or --no-torch")
    bf16 = {"auto": machine["bf16_dot_units"], "on": True, "off": False}[args.torch_bf16]
    cache = Path(args.torch_compile_cache)
    cache_state = "warm" if cache.is_dir() and any(cache.iterdir()) else "cold"
    load_before = os.getloadavg()

    import jax
    import numpy as np

    net = QUICK_NET if args.quick else FULL_NET
    jsr = JsrSide(args, net)
    specs = case_specs(args, net)
    for spec in specs.values():
        spec["net"] = net
    from jsr.ops.conv import resolve_conv

    infer_default = jsr.default_infer_conv()

    train_default = resolve_conv("auto", jax.default_backend())
    if train_default not in args.train_convs:
        args.train_convs = [train_default, *args.train_convs]
    defaults = {
        "infer_64": f"jsr_{infer_default}",
        "infer_128": f"jsr_{infer_default}",
        "train": "jsr_fast" if train_default == "fast" else f"jsr_train_{train_default}",
    }
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown cases {sorted(unknown)}; choose from {CASES}")

    work = Path(tempfile.mkdtemp(prefix="jsr-rrdbnet-bench-"))
    weights = work / "weights.npz"
    np.savez(weights, **jsr.torch_state_dict())
    # (case, round) in priority order: the first rounds of infer_64 and train always run, the rest while they fit
    tasks = [(c, 0) for c in ("infer_64", "train") if c in cases]
    tasks += [("infer_64", r) for r in range(1, args.rounds) if "infer_64" in cases]
    tasks += [("infer_128", 0)] if "infer_128" in cases else []
    tasks += [("train", r) for r in range(1, args.rounds) if "train" in cases]
    tasks += [("infer_128", r) for r in range(1, args.rounds) if "infer_128" in cases]
    rounds: dict[str, list[dict]] = {c: [] for c in cases}
    torch_details: dict[str, dict] = {c: {} for c in cases}
    walls: dict[tuple[str, int], dict] = {}
    skipped, torch_versions = [], {}
    for case, r in tasks:
        if r > 0 and len(rounds[case]) < r:
            continue  # an earlier round of this case was skipped
        estimate = estimate_task(case, r, walls, specs, args)
        elapsed = time.perf_counter() - wall_start
        required = r == 0 and case in ("infer_64", "train")
        if not required and not args.quick and elapsed + estimate > args.budget_s:
            skipped.append(
                {"case": case, "round": r + 1, "estimated_s": round(estimate, 1), "elapsed_s": round(elapsed, 1)}
            )
            print(f"skip {case} round {r + 1}: estimated {estimate:.0f} s, {elapsed:.0f} s of {args.budget_s} used")
            continue
        spec = specs[case]
        start = time.perf_counter()
        jsr_result, torch_result = None, None
        torch_first = r % 2 == 1 and torch_python is not None
        if torch_first:
            torch_result = run_torch_round(args, torch_python, case, spec, r, work, weights, bf16)
        mid = time.perf_counter()
        jsr_result = jsr.run_round(case, spec, r)
        jsr_s = time.perf_counter() - mid
        if torch_python and not torch_first:
            torch_result = run_torch_round(args, torch_python, case, spec, r, work, weights, bf16)
        merged = dict(jsr_result)
        torch_fixed = 0.0
        if torch_result:
            torch_versions = torch_result["versions"]
            for name, t in torch_result["variants"].items():
                merged[name] = t
                d = torch_details[case].setdefault(name, {"first_s": []})
                d["first_s"].append(t["first_s"])
                d["peak_rss_mb_so_far"] = t["peak_rss_mb_so_far"]
                torch_fixed += t["first_s"] - statistics.median(t["times_s"])
        jsr_fixed = sum(
            info.get("build_s", 0.0) + info.get("compile_s", 0.0) + info.get("first_s", 0.0)
            for _, _, info in jsr.built.get(case, [])
        )
        walls[(case, r)] = {"wall_s": time.perf_counter() - start, "jsr_s": jsr_s}
        walls[(case, r)] |= {"jsr_fixed_s": jsr_fixed if r == 0 else 0.0, "torch_fixed_s": torch_fixed}
        walls[(case, r)] |= {"estimated_s": estimate, "started_at_s": start - wall_start}
        rounds[case].append(merged)
        print(f"{case} round {r + 1}: {walls[(case, r)]['wall_s']:.0f} s", flush=True)

    results = {}
    for case in cases:
        if not rounds[case]:
            results[case] = {"skipped": "time budget", "shape": specs[case]["shape"]}
            continue
        results[case] = summarise_case(case, specs[case], rounds[case], jsr, torch_details[case], defaults[case])
        results[case]["round_walls_s"] = [walls[(case, r)]["wall_s"] for r in range(len(rounds[case]))]
    checks = consistency_checks(jsr, work, results)
    report = {
        "benchmark": "benchmarks/rrdbnet.py",
        "network": {
            "arch": "rrdbnet",
            "scale": 4,
            **net,
            "weights": "random (jsr Flax init, PRNGKey 0), same both sides",
        },
        "machine": machine,
        "versions": versions(torch_versions),
        "settings": {
            "quick": args.quick,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "repeats_infer_64": specs["infer_64"]["repeats"],
            "repeats_infer_128": specs["infer_128"]["repeats"],
            "repeats_train": specs["train"]["repeats"],
            "budget_s": args.budget_s,
            "train_convs": args.train_convs,
            "torch_bf16": bf16,
            "torch_adam": "Adam(lr=2e-4, fused=True)" if not args.no_fused_adam else "Adam(lr=2e-4)",
            "torch_compile_cache": str(cache),
            "torch_compile_cache_before_run": cache_state,
        },
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "checks": checks,
        "skipped": skipped,
        "tasks": [{"case": c, "round": r + 1, **{k: round(x, 1) for k, x in w.items()}} for (c, r), w in walls.items()],
        "cases": results,
        "wall_s": time.perf_counter() - wall_start,
    }
    table = format_table(report)
    report["table_markdown"] = table
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return report


def estimate_task(case: str, r: int, walls: dict, specs: dict, args) -> float:
    """Seconds a task should take, from the tasks already run (0 when there is nothing to go on): a later round
    repeats the first without jsr's build and compile; infer_128 is 4x infer_64's pixels."""
    if r > 0 and (case, 0) in walls:
        return walls[(case, 0)]["wall_s"] - walls[(case, 0)]["jsr_fixed_s"]
    if case == "infer_128" and ("infer_64", 0) in walls:
        w = walls[("infer_64", 0)]
        fixed = w["jsr_fixed_s"] + w["torch_fixed_s"]
        calls = lambda s: s["repeats"] + args.warmup + 1  # noqa: E731
        steady = max(0.0, w["wall_s"] - fixed) * 4 * calls(specs["infer_128"]) / calls(specs["infer_64"])
        return steady + 1.2 * w["jsr_fixed_s"] + 1.5 * w["torch_fixed_s"]
    return 0.0


def consistency_checks(jsr: JsrSide, work: Path, results: dict) -> dict:
    """The same network and weights on both sides: output and first-loss differences."""
    import numpy as np

    checks = {}
    ref_path = work / "infer_64-torch-eager-out.npy"
    if ref_path.exists():
        ref = np.load(ref_path)
        for name in ("jsr_xla", "jsr_winograd"):
            out = jsr.outputs.get(f"infer_64/{name}")
            if out is not None:
                checks[f"infer_64_max_abs_diff_{name}_vs_torch_eager"] = float(np.max(np.abs(out - ref)))
    train = results.get("train", {}).get("variants", {})
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


def format_table(report: dict) -> str:
    m, v, cases = report["machine"], report["versions"], report["cases"]
    flags = ", ".join(f for f, on in m["flags_of_interest"].items() if on and f.startswith(("avx512_bf16", "amx")))
    lines = [
        f"machine: {m['model_name']} (family/model/stepping {m['family_model_stepping']}), {m['cores']} cores, "
        f"bf16 dot units: {flags or 'none'}",
        f"jax {v['jax']} (Python {v['python']})"
        + (f"; torch {v['torch']} (Python {v['torch_python']}, {v['torch_threads']} threads)" if "torch" in v else "")
        + f"; torch.compile cache before the run: {report['settings']['torch_compile_cache_before_run']}",
        "",
    ]
    ran = [c for c in cases if "variants" in cases[c]]
    header = "| variant | " + " | ".join(f"{c}: {cases[c]['shape']}" for c in ran) + " |"
    lines += [header, "|---" * (len(ran) + 1) + "|"]
    names = []
    for c in ran:
        names += [n for n in cases[c]["variants"] if n not in names]
    names.sort(key=lambda n: (not n.startswith("jsr"), list(LABELS).index(n)))
    for n in names:
        cells = []
        for c in ran:
            var = cases[c]["variants"].get(n)
            if var is None:
                cells.append("—")
                continue
            unit = "MP/s" if cases[c]["unit"].startswith("output") else "img/s"
            mark = "**" if n in (cases[c].get("torch_fastest_float32"), cases[c].get("jsr_default")) else ""
            cells.append(f"{mark}{fmt_s(var['median_s'])}{mark} ({var['throughput']:.3g} {unit})")
        lines.append(f"| {LABELS[n]} | " + " | ".join(cells) + " |")
    if any("ratio_best_float32" in cases[c] for c in ran):
        rows = [
            ("fastest torch float32", lambda r: LABELS[r["torch_fastest_float32"]]),
            ("jsr default path", lambda r: LABELS[r["jsr_default"]]),
            ("ratio_best_float32 (jsr default / fastest torch f32)", lambda r: f"{r['ratio_best_float32']:.2f}x"),
            ("jsr fastest / fastest torch f32", lambda r: f"{r['ratio_best_float32_jsr_fastest']:.2f}x"),
            ("jsr default / torch eager NCHW f32", lambda r: f"{r['ratio_vs_eager']:.2f}x"),
            ("jsr default f32 / fastest torch (any dtype)", lambda r: f"{r['ratio_vs_fastest_any']:.2f}x"),
            ("per-round ratio_best_float32", lambda r: " ".join(f"{x:.2f}x" for x in r["round_ratios_best_float32"])),
        ]
        for label, fn in rows:
            lines.append(
                f"| {label} | "
                + " | ".join(fn(cases[c]) if "ratio_best_float32" in cases[c] else "—" for c in ran)
                + " |"
            )
    lines += [
        "",
        "compile / first call (s): jsr lower+compile (train) or first call minus median (inference); "
        "torch first call minus median, round 1",
        "",
    ]
    lines += ["| variant | " + " | ".join(ran) + " |", "|---" * (len(ran) + 1) + "|"]
    for n in names:
        cells = []
        for c in ran:
            var = cases[c]["variants"].get(n)
            cells.append("—" if var is None else f"{var.get('compile_s', 0):.1f}")
        lines.append(f"| {LABELS[n]} | " + " | ".join(cells) + " |")
    for s in report["skipped"]:
        lines.append(f"\nskipped {s['case']} round {s['round']}: estimated {s['estimated_s']} s at {s['elapsed_s']} s")
    lines.append(f"\nwall {report['wall_s']:.0f} s; checks: " + json.dumps(report["checks"]))
    return "\n".join(lines)


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--quick", action="store_true", help="a 1-block x 8-feature net on tiny shapes: a smoke run")
    p.add_argument("--rounds", type=int, default=2, help="ABBA rounds per case (the later ones while time allows)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after the first (compiling) call")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per variant and round, infer_64 (128: one less)")
    p.add_argument("--train-repeats", type=int, default=2, help="timed train steps per variant and round")
    p.add_argument("--budget-s", type=float, default=450.0, help="optional tasks run while the estimate fits this")
    p.add_argument("--train-convs", default="fast", help="jsr conv paths of the train step (comma-separated)")
    p.add_argument("--torch-python", help="a Python that imports torch (default: $JSR_TORCH_PYTHON)")
    p.add_argument("--no-torch", action="store_true", help="jsr side only")
    p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0 = PyTorch's default)")
    p.add_argument("--torch-bf16", default="auto", choices=["auto", "on", "off"], help="auto: if the CPU has bf16 dots")
    p.add_argument("--no-fused-adam", action="store_true", help="torch.optim.Adam's default for-loop step")
    p.add_argument(
        "--torch-compile-cache",
        default=str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jsr-benchmarks" / "inductor"),
        help="TORCHINDUCTOR_CACHE_DIR of the PyTorch side",
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
