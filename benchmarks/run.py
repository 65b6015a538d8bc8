"""jsr against a PyTorch reference of the same network, side by side, in one run.

    /tmp/v312/bin/python benchmarks/run.py --json out.json [--repeats 5] [--quick] [--conv xla] [--compare-conv]

Cases (same shapes on both sides; defaults are SRGAN's: SRResNet 16 blocks x 64 features, batch 16, LR 24 -> HR 96):
  train_mse         the REAL jsr train step (``jsr.train.build_standard`` on a ``base_config()``), stage mse: images/s
  train_gan         the same, stage gan (D step, then G step with MSE + VGG54 + adversarial; random VGG19): images/s
  infer_128         ``jsr.inference.Upscaler`` on one 128x128 image (-> 512x512): output megapixels/s
  infer_1024_tiled  the same on 1024x1024 (-> 4096x4096), tiled by the Upscaler's defaults: output megapixels/s
The jsr side runs in this process; the PyTorch side (``benchmarks/torch_reference.py``) in a fresh subprocess of a
Python that has torch (``--torch-python``), right after the jsr side of the same case, so that background load hits
both alike (``--rounds R`` runs R such pairs per case in ABBA order; medians over all their repetitions, and each
round's ratio). jsr runs with ``--conv`` (default 'auto', as training resolves it: 'winograd' on CPU in float32,
'xla' on GPU/TPU; ``--compare-conv`` also times the other path, 'winograd' for 'fast', else 'fast'). Each side:
warm-up excluded, median of ``--repeats`` timed repetitions. jsr's compile time is reported apart (lower + compile
of the step; for inference, first call minus the median). Peak memory: the torch process's peak RSS per case; jsr's
process peak RSS so far (cumulative over the cases run in this process) and XLA's own buffer sizes for the case.
FLOPs come from XLA's cost analysis of the computation lowered for the CPU (the same count on any device); achieved
FLOP/s is always reported, and the fraction of the device's peak on a known GPU / TPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = ("train_mse", "train_gan", "infer_128", "infer_1024_tiled")
# Dense peak FLOP/s (no sparsity) by device-kind substring, per compute dtype. float32 on these GPUs is the TF32
# tensor-core rate: XLA's and cuDNN's float32 convolutions run as TF32 by default (measured on an H200: jsr's
# float32 GAN step did 99 TFLOP/s, beyond the 67 of plain FP32).
PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float32": 494.7e12},
    "H100": {"bfloat16": 989e12, "float32": 494.7e12},  # SXM; PCIe is ~756e12 / 378e12
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12 / 4},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12 / 4},
}


def torch_python_candidates() -> list[str]:
    return ["/tmp/v311/bin/python", shutil.which("python3.11") or "", sys.executable]


def find_torch_python(explicit: str | None) -> str | None:
    for exe in [explicit] if explicit else torch_python_candidates():
        if exe and Path(exe).exists():
            ok = subprocess.run([exe, "-c", "import torch"], capture_output=True).returncode == 0
            if ok:
                return exe
            if explicit:
                raise SystemExit(f"--torch-python {exe} cannot import torch")
    return None


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


def machine_info() -> dict:
    from jsr import onednn

    fields = {}
    try:
        env = {**os.environ, "LC_ALL": "C"}  # English field names
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env=env).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    flags = set(fields.get("Flags", "").split()) or onednn.x86_cpu_flags() or set()
    if not fields.get("Model name"):  # no lscpu: /proc/cpuinfo's name
        try:
            names = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
            fields["Model name"] = names[0].split(":", 1)[1].strip() if names else ""
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
        "bf16_dot_units": bool(flags & onednn.BF16_CPU_FLAGS),
        "system": platform.system(),
    }


def machine_name(info: dict | None = None) -> str:
    """The CPU's model, its widest vector units and core count: 'AMD EPYC' names both Zen 3 (AVX2) and Zen 4."""
    m = info or machine_info()
    has = m["flags_of_interest"]
    widest = "AVX-512" if has["avx512f"] else "AVX2" if has["avx2"] else None
    units = [u for u in (widest, *(f for f in ("avx512_bf16", "amx_bf16") if has[f])) if u]
    cpu = f"{m['model_name']} (family/model/stepping {m['family_model_stepping']}; {', '.join(units)})"
    return f"{cpu}, {m['cores']} cores, {m['system']}"


def machine_record() -> dict:
    """A results JSON's ``machine`` (its name) and ``cpu`` (``machine_info``) fields, lscpu run once."""
    cpu = machine_info()
    return {"machine": machine_name(cpu), "cpu": cpu}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent over exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------------ jsr side


def cost_flops(jitted, *args, **kwargs) -> float | None:
    """FLOPs of ``jitted(*args, **kwargs)`` by XLA's cost analysis of the program lowered FOR THE CPU (not yet
    optimised): the same count whatever device runs it. The device's own analysis misses work handed to library
    calls (on a GPU, the compiled step's cuDNN convolutions count 0, and the lowered module's analysis gave none
    under jax 0.11)."""
    try:
        cost = jitted.trace(*args, **kwargs).lower(lowering_platforms=("cpu",)).cost_analysis()
    except Exception:  # noqa: BLE001 - an analysis is a nicety, never a reason to lose the timings
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def memory_mb(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
        return {
            "xla_temp_mb": m.temp_size_in_bytes / 2**20,
            "xla_args_mb": m.argument_size_in_bytes / 2**20,
            "xla_out_mb": m.output_size_in_bytes / 2**20,
        }
    except Exception:  # noqa: BLE001
        return {}


def timed(fn, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def jsr_config(case: str, args):
    from jsr.config import base_config

    c = base_config()
    c.stage = "gan" if case == "train_gan" else "mse"
    c.model.n_feats, c.model.num_blocks = args.n_feats, args.num_blocks
    c.discriminator.n_feats = args.n_feats  # torch_reference.py builds its Discriminator with --n_feats too
    c.data.patch_size, c.data.scale = args.patch, 4
    c.data.augment.enabled = False  # the reference has no augmentation either
    c.batch_size = args.batch
    c.compute_dtype = args.dtype
    c.model.conv = args.conv
    c.cpu_onednn = "on" if args.cpu_onednn else "off"  # main() has set the flags (or not) already
    c.loss.allow_random_vgg = True  # timing needs no real VGG weights
    return c


def jsr_train(case: str, args) -> tuple:
    """The compiled real train step: ``(step, info)``; ``step()`` runs one step and reads its loss on the host."""
    import jax
    import numpy as np

    from jsr import data as jdata
    from jsr.train import build_generator, build_standard

    config = jsr_config(case, args)
    parts = build_standard(config, build_generator(config))
    state, frozen = parts.state, jax.device_put(parts.frozen)
    rng = np.random.default_rng(0)
    hr_side = 4 * args.patch
    batch = {
        "hr": rng.integers(0, 256, (args.batch, hr_side, hr_side, 3), dtype=np.uint8),
        "lr": rng.integers(0, 256, (args.batch, args.patch, args.patch, 3), dtype=np.uint8),
    }
    batch = jax.device_put(batch)
    aug = jax.device_put(jdata.augment_params(config.data.augment, args.batch))
    start = time.perf_counter()
    compiled = parts.train_step.lower(state, batch, aug, frozen).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def step():
        holder["state"], out = compiled(holder["state"], batch, aug, frozen)
        float(out["g_loss"])  # the host reads a metric, as the training loop does (and torch's .item())

    step.compiled = compiled  # its optimised HLO: benchmarks/profile_step.py groups the profiled ops by it

    # FLOPs counted for direct convolutions (conv='xla'): XLA's analysis counts a loop body once, and Winograd's
    # bands are a loop (its point is fewer multiplications for the same result: FLOP/s are direct equivalents)
    direct_config = jsr_config(case, argparse.Namespace(**(vars(args) | {"conv": "xla"})))
    direct = build_standard(direct_config, build_generator(direct_config))
    return step, {
        "items": args.batch,
        "compile_s": compile_s,
        "flops": cost_flops(direct.train_step, state, batch, aug, jax.device_put(direct.frozen)),
        **memory_mb(compiled),
    }


def jsr_infer(case: str, args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jsr.inference import Upscaler
    from jsr.train import build_generator

    config = jsr_config("train_mse", args)
    generator = build_generator(config)
    variables = generator.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    side = args.infer_side if case == "infer_128" else args.tiled_side
    tiled = case != "infer_128"
    tile = args.tile if tiled else None
    upscaler = Upscaler(generator, variables, tile=tile, tile_batch=args.tile_batch or None, conv=args.infer_conv)
    image = np.random.default_rng(0).random((side, side, 3), dtype=np.float32)
    start = time.perf_counter()
    upscaler.upscale(image)
    first_s = time.perf_counter() - start
    times = timed(lambda: upscaler.upscale(image), args.warmup - 1, args.repeats)
    # FLOPs: the forward on each canvas shape it ran, times the number of canvases per image; counted for the
    # direct ('xla') convolutions whatever path ran (Winograd's loop over bands would be counted once, and its point
    # is to do fewer multiplications for the same result: its FLOP/s are direct-convolution equivalents).
    flops = 0.0
    crop = (upscaler.overlap * upscaler.scale, upscaler.tile * upscaler.scale) if tiled else None
    direct = Upscaler(generator, variables, tile=tile, conv="xla")
    for shape in upscaler.compiled_shapes:
        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        bounds = jax.ShapeDtypeStruct((shape[0], 4), jnp.int32)
        compiled = upscaler._program(crop, False).lower(upscaler.variables, x, bounds).compile()
        f = cost_flops(direct._program(crop, False), direct.variables, x, bounds)
        flops = None if f is None or flops is None else flops + f
    if tiled and flops is not None:  # one canvas shape, run once per batch of tiles
        n = -(-side // upscaler.tile)
        per_call = next(iter(upscaler.compiled_shapes))[0]
        flops *= -(-(n * n) // per_call)
    return {
        "times_s": times,
        "items": (4 * side) ** 2 / 1e6,
        "compile_s": max(0.0, first_s - statistics.median(times)),
        "flops": flops,
        "overlap": upscaler.overlap,
        "tile": upscaler.tile,
        "canvases": sorted(upscaler.compiled_shapes),
        "conv": upscaler.module.conv,
        **(memory_mb(compiled) if flops is not None else {}),
    }


def run_jsr(case: str, args, other_conv: str | None = None) -> list[dict]:
    """jsr's results for ``case`` with ``args.conv`` (and, for train cases, ``other_conv`` too: both compiled first,
    then timed alternately step by step so that background load hits both alike)."""
    if not case.startswith("train"):
        result = jsr_infer(case, args)
        result["peak_rss_mb"] = peak_rss_mb()
        return [result]
    variants = [args] + ([argparse.Namespace(**(vars(args) | {"conv": other_conv}))] if other_conv else [])
    built = [jsr_train(case, a) for a in variants]
    for step, _ in built:
        for _ in range(args.warmup):
            step()
    for _, info in built:
        info["times_s"] = []
    for _ in range(args.repeats):
        for step, info in built:
            start = time.perf_counter()
            step()
            info["times_s"].append(time.perf_counter() - start)
    for _, info in built:
        info["peak_rss_mb"] = peak_rss_mb()
    return [info for _, info in built]


# ------------------------------------------------------------------------------------------------ torch side


# PyTorch variants (benchmarks/torch_reference.py applies them): name -> (channels_last, torch.compile mode or None)
TORCH_VARIANTS = {
    "eager": (False, None),
    "channels_last": (True, None),
    "compile": (False, "default"),
    "channels_last_compile": (True, "default"),
    "compile_max_autotune": (False, "max-autotune"),
    "channels_last_compile_max_autotune": (True, "max-autotune"),
    "compile_reduce_overhead": (False, "reduce-overhead"),  # CUDA graphs: CUDA only
    "channels_last_compile_reduce_overhead": (True, "reduce-overhead"),
}


def torch_variants(args) -> list[str]:
    """The PyTorch variants to time: ``--torch-variants``, or every one that runs on the device (CUDA graphs on
    CUDA only); an unknown or impossible name stops here, before anything runs."""
    cuda = args.torch_device.startswith("cuda")
    possible = [v for v, (_, mode) in TORCH_VARIANTS.items() if cuda or mode != "reduce-overhead"]
    if not args.torch_variants:
        return possible
    names = [v for v in args.torch_variants.split(",") if v]
    bad = [v for v in names if v not in possible]
    if bad:
        raise SystemExit(f"--torch-variants: {bad} not among {possible} (reduce-overhead variants need CUDA)")
    return names


def run_torch(case: str, args, python: str, overlap: int, variant: str = "eager", extra: tuple = ()) -> dict:
    cmd = [python, str(HERE / "torch_reference.py"), "--case", case, "--repeats", str(args.repeats), *extra]
    cmd += ["--variant", variant]
    cmd += ["--warmup", str(args.warmup), "--batch", str(args.batch), "--patch", str(args.patch)]
    cmd += ["--n_feats", str(args.n_feats), "--num_blocks", str(args.num_blocks)]
    cmd += ["--infer_side", str(args.infer_side), "--tiled_side", str(args.tiled_side)]
    cmd += ["--tile", str(args.tile), "--overlap", str(overlap), "--device", args.torch_device]
    if args.torch_threads:
        cmd += ["--threads", str(args.torch_threads)]
    if args.dtype == "bfloat16":
        cmd.append("--amp")
    from jsr import host_memory

    env = os.environ | ({"GLIBC_TUNABLES": host_memory.TUNABLES} if args.host_malloc == "reuse" else {})
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:  # recorded, not raised: one variant (e.g. torch.compile without a C++ compiler) failing
        lines = done.stderr.strip().splitlines() or ["no output"]
        print(f"warning: torch {variant} failed for {case}: {lines[-1]}", file=sys.stderr, flush=True)
        return {"error": lines[-1], "stderr_tail": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def torch_round(case: str, args, python: str, jsr_runs: list, torch_runs: dict) -> None:
    """One run of every PyTorch variant (``torch_runs``: variant -> its runs so far), each in a fresh process."""
    overlap = jsr_runs[0][0].get("overlap", 0) if jsr_runs else 0
    for variant, runs in torch_runs.items():
        runs.append(run_torch(case, args, python, overlap, variant))


# ------------------------------------------------------------------------------------------------ report


def merge_runs(runs: list[dict]) -> dict:
    """One side's runs of a case (``--rounds``) as one: all timed repetitions, the largest peak memory, the first
    run's compile time (later runs compile the same program again)."""
    merged = dict(runs[0])
    merged["times_s"] = [t for run in runs for t in run["times_s"]]
    if "peak_rss_mb" in merged:
        merged["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
    return merged


def summarise(side: dict, unit_flops: bool, peak: float | None) -> dict:
    med = statistics.median(side["times_s"])
    out = {"median_s": med, "throughput": side["items"] / med, "times_s": side["times_s"]}
    kept = ("compile_s", "first_s", "peak_rss_mb", "xla_temp_mb", "xla_args_mb", "xla_out_mb", "tile", "overlap")
    for k in (*kept, "conv"):
        if k in side:
            out[k] = side[k]
    if unit_flops and side.get("flops"):
        out["flops"] = side["flops"]
        out["achieved_flops_per_s"] = side["flops"] / med
        if peak:
            out["fraction_of_peak"] = out["achieved_flops_per_s"] / peak
    return out


def device_peak(dtype: str) -> tuple[str, float | None]:
    import jax

    kind = jax.devices()[0].device_kind
    for name, peaks in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return kind, peaks.get(dtype)
    return kind, None


def versions(torch_versions: dict | None, args) -> dict:
    import flax
    import jax
    import jaxlib

    v = {
        "jsr_python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "jsr_conv": args.conv,
        "jsr_cpu_onednn": args.cpu_onednn,
        "host_malloc": args.host_malloc,
        "dtype": args.dtype,
    }
    if torch_versions:
        v |= {f"torch_{k}" if k != "torch" else "torch": val for k, val in torch_versions.items()}
    return v


def parse_args(argv=None):
    from jsr import onednn

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per side and case (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions first (>= 1; the first compiles)")
    p.add_argument("--quick", action="store_true", help="tiny shapes, 1 warm-up, 2 repetitions: a smoke run")
    p.add_argument(
        "--conv",
        default="auto",
        choices=["auto", "xla", "fast", "winograd", "onednn"],
        help="jsr's convolution path (config.model.conv)",
    )
    p.add_argument(
        "--compare-conv", action="store_true", help="train cases: also time jsr with the other conv path (jsr_other)"
    )
    p.add_argument("--tiled-repeats", type=int, default=3, help="repetitions of the (long) 1024 tiled case")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="alternate jsr and torch runs of each case this many times (medians over all)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype (torch: AMP)")
    p.add_argument(
        "--cpu-onednn",
        default="auto",
        choices=onednn.CHOICES,
        help="oneDNN's CPU convolutions (config.cpu_onednn; 'auto': bfloat16 on a CPU with bf16 dot instructions)",
    )
    p.add_argument(
        "--host-malloc",
        default="reuse",
        choices=["reuse", "system"],
        help="glibc malloc on both sides: 'reuse' keeps freed memory (what every jsr command sets, jsr.host_memory; "
        "PyTorch gets the same as GLIBC_TUNABLES), 'system' = glibc's defaults",
    )
    p.add_argument("--torch-python", help="a Python that imports torch (default: /tmp/v311/bin/python, python3.11)")
    p.add_argument("--torch-device", default="cpu", help="cpu | cuda")
    p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0 = PyTorch's default)")
    p.add_argument("--no-torch", action="store_true", help="jsr side only")
    p.add_argument(
        "--torch-variants",
        default="",
        help="comma-separated PyTorch variants (benchmarks/torch_reference.py VARIANTS); default: every one that runs "
        "on --torch-device. With --dtype bfloat16 each runs under bfloat16 autocast",
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=24, help="LR training patch (HR = 4x)")
    p.add_argument("--n_feats", type=int, default=64)
    p.add_argument("--num_blocks", type=int, default=16)
    p.add_argument("--infer_side", type=int, default=128)
    p.add_argument("--tiled_side", type=int, default=1024)
    p.add_argument("--tile", type=int, default=256, help="Upscaler tile for the tiled case (its default)")
    p.add_argument("--tile-batch", type=int, default=0, help="Upscaler tiles per call (0 = its default)")
    p.add_argument(
        "--infer-conv",
        default="auto",
        choices=["auto", "xla", "fast", "winograd"],
        help="the Upscaler's conv path (auto: winograd for float32 on CPU, else the training path)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.patch, args.n_feats, args.num_blocks = 2, 8, 8, 2
        args.infer_side, args.tiled_side, args.tile = 32, 64, 32
        args.repeats, args.warmup = min(args.repeats, 2), 1
        args.tiled_repeats = min(args.tiled_repeats, 2)
    args.warmup = max(1, args.warmup)
    args.rounds = max(1, args.rounds)
    return args


def configure_process(args) -> None:
    """This process's oneDNN flags and malloc settings (before JAX starts) and the conv path, as training sets and
    resolves them; ``args`` records what was chosen."""
    from jsr import host_memory, onednn

    args.cpu_onednn = onednn.configure(args.cpu_onednn, args.dtype)  # as training does, before JAX starts
    if args.host_malloc == "reuse" and not host_memory.configure():  # as every jsr command does
        args.host_malloc = "system"  # glibc's defaults here (not glibc, or the environment chose): torch's too
    import jax

    from jsr import archs
    from jsr.ops.conv import resolve_conv

    library_convs = onednn.takes_convs(args.dtype)
    pays = archs.get("srresnet").winograd_pays(args.dtype)
    args.conv = resolve_conv(args.conv, jax.default_backend(), False, library_convs, pays)  # as training would


def main(argv=None) -> dict:
    args = parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown cases {sorted(unknown)}; choose from {CASES}")
    torch_python = None if args.no_torch else find_torch_python(args.torch_python)
    if not args.no_torch and torch_python is None:
        raise SystemExit("no Python with torch found: pass --torch-python or --no-torch")
    configure_process(args)
    import jax

    kind, peak = device_peak(args.dtype)
    on_accelerator = jax.default_backend() != "cpu"
    load_before = os.getloadavg()
    results, torch_versions = {}, None
    variants = torch_variants(args)
    for case in cases:
        case_args = argparse.Namespace(**vars(args))
        if case == "infer_1024_tiled":
            case_args.repeats, case_args.warmup = args.tiled_repeats, 1
        other_conv = {"fast": "winograd"}.get(args.conv, "fast") if args.compare_conv else None
        # --rounds alternates whole jsr and torch runs in the order jsr, torch, torch, jsr, jsr, ... (ABBA), so that
        # minutes-long drift of the machine hits both sides alike
        jsr_runs, torch_runs = [], {v: [] for v in variants}

        for r in range(args.rounds):
            torch_first = r % 2 == 1 and torch_python
            if torch_first:
                torch_round(case, case_args, torch_python, jsr_runs, torch_runs)
            jsr_runs.append(run_jsr(case, case_args, other_conv))
            if torch_python and not torch_first:
                torch_round(case, case_args, torch_python, jsr_runs, torch_runs)
        jsr, *other = (merge_runs(list(sides)) for sides in zip(*jsr_runs, strict=True))
        row = {"jsr_detail": summarise(jsr, True, peak)}
        row["jsr"] = row["jsr_detail"]["throughput"]
        if other:
            row["jsr_other_detail"] = summarise(other[0], True, peak) | {"conv": other_conv}
            row["jsr_other"] = row["jsr_other_detail"]["throughput"]
        if torch_python:
            failed = {v: runs[0] for v, runs in torch_runs.items() if any("error" in r for r in runs)}
            details = {v: summarise(merge_runs(runs), False, None) for v, runs in torch_runs.items() if v not in failed}
            if not details:
                raise SystemExit(f"every PyTorch variant failed for {case}: {failed}")
            torch_versions = next(runs[0]["versions"] for v, runs in torch_runs.items() if v in details)
            for v in details:
                details[v]["applied"] = torch_runs[v][0]["applied"]
            row["torch_variants"] = details
            if failed:
                row["torch_failed"] = {v: r["error"] for v, r in failed.items()}
            # ratio: against eager (the reference of earlier reports); ratio_best: against the fastest variant at
            # the same dtype class (every variant of one run has this run's dtype: float32, or bfloat16 autocast)
            reference = "eager" if "eager" in details else variants[0]
            row["torch_detail"] = details[reference] | {"variant": reference}
            row["torch"] = details[reference]["throughput"]
            row["ratio"] = row["jsr"] / row["torch"]
            best = max(details, key=lambda v: details[v]["throughput"])
            row["torch_best"] = best
            row["ratio_best"] = row["jsr"] / details[best]["throughput"]
            if args.rounds > 1:  # each round's ratio of medians against the reference: the spread the drift leaves
                row["round_ratios"] = [
                    summarise(j[0], False, None)["throughput"] / summarise(t, False, None)["throughput"]
                    for j, t in zip(jsr_runs, torch_runs[reference], strict=True)
                ]
            if "jsr_other" in row:
                row["ratio_other"] = row["jsr_other"] / row["torch"]
                row["ratio_other_best"] = row["jsr_other"] / details[best]["throughput"]
        row["unit"] = "images/s" if case.startswith("train") else "output megapixels/s"
        results[case] = row
        print(format_row(case, row), flush=True)
    report = {
        **machine_record(),
        "device": kind,
        "device_peak_flops": peak,
        "on_accelerator": on_accelerator,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "versions": versions(torch_versions, args),
        "settings": {
            k: getattr(args, k)
            for k in (
                "batch",
                "patch",
                "n_feats",
                "num_blocks",
                "infer_side",
                "tiled_side",
                "tile",
                "repeats",
                "rounds",
            )
        }
        | {"warmup": args.warmup, "quick": args.quick},
        "cases": results,
    }
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_row(case: str, row: dict) -> str:
    j = row["jsr_detail"]
    text = f"{case}: jsr {row['jsr']:.3f} {row['unit']} ({j['median_s'] * 1e3:.0f} ms"
    text += f", conv={j['conv']})" if "conv" in j else ")"
    if "torch" in row:
        t = row["torch_detail"]
        text += f", torch {t['variant']} {row['torch']:.3f} ({t['median_s'] * 1e3:.0f} ms), ratio {row['ratio']:.2f}x"
        best = row["torch_variants"][row["torch_best"]]
        text += f"; fastest torch {row['torch_best']} {best['throughput']:.3f} ({best['median_s'] * 1e3:.0f} ms,"
        text += f" first call {best.get('first_s', 0):.1f} s), ratio_best {row['ratio_best']:.2f}x"
    if "jsr_other" in row:
        o = row["jsr_other_detail"]
        text += f"; jsr conv={o['conv']} {row['jsr_other']:.3f} ({o['median_s'] * 1e3:.0f} ms)"
    if "round_ratios" in row:
        text += "; rounds " + " ".join(f"{r:.2f}x" for r in row["round_ratios"])
    return text


def format_table(report: dict) -> str:
    v = report["versions"]
    lines = [
        f"machine: {report['machine']}; device: {report['device']}",
        f"jsr: Python {v['jsr_python']}, jax {v['jax']}, flax {v['flax']}, conv={v['jsr_conv']}, {v['dtype']}"
        + (f"; torch {v['torch']} (Python {v['torch_python']}, {v['torch_threads']} threads)" if "torch" in v else ""),
        "load average before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}".format(
            *report["load_average_before"], *report["load_average_after"]
        ),
        "",
        f"{'case':<18}{'unit':<22}{'jsr':>10}{'torch':>10}{'ratio':>8}{'jsr compile s':>15}"
        f"{'jsr GFLOP/s':>13}{'peak RSS MB jsr/torch':>24}",
    ]
    for case, row in report["cases"].items():
        j, t = row["jsr_detail"], row.get("torch_detail", {})
        gflops = j.get("achieved_flops_per_s")
        frac = j.get("fraction_of_peak")
        lines.append(
            f"{case:<18}{row['unit']:<22}{row['jsr']:>10.3f}"
            + (f"{row['torch']:>10.3f}{row['ratio']:>7.2f}x" if "torch" in row else f"{'-':>10}{'-':>8}")
            + f"{j.get('compile_s', 0):>15.1f}"
            + (f"{gflops / 1e9:>13.1f}" if gflops else f"{'-':>13}")
            + f"{j.get('peak_rss_mb', 0):>14.0f} / {t.get('peak_rss_mb', 0):<7.0f}"
            + (f" {100 * frac:.1f}% of peak" if frac else "")
        )
        if "jsr_other" in row:
            o = row["jsr_other_detail"]
            ratio = f"{row['ratio_other']:>7.2f}x" if "ratio_other" in row else f"{'-':>8}"
            lines.append(f"{'  conv=' + o['conv']:<18}{'':<22}{row['jsr_other']:>10.3f}{'':>10}{ratio}")
        for variant, d in row.get("torch_variants", {}).items():  # jsr / each variant; * marks the fastest
            mark = "*" if variant == row["torch_best"] else " "
            lines.append(
                f"  {mark}torch {variant:<36}{d['throughput']:>10.3f}{row['jsr'] / d['throughput']:>7.2f}x"
                f"   {d['median_s'] * 1e3:.0f} ms, first call {d.get('first_s', 0):.1f} s"
            )
        if "ratio_best" in row:
            lines.append(f"  ratio_best (jsr / fastest torch, {row['torch_best']}): {row['ratio_best']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
