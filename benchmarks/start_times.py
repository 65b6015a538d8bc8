"""Cold and warm start of jsr's commands: whole-process wall time with an empty vs a filled compilation cache.

    python benchmarks/start_times.py [--runs 3] [--json out.json] [--baseline OTHER_CHECKOUT]

Cases: `jsr-upscale` of one 128x128 photo; the quickstart trained for 1 step (MSE, whole command: start, compile,
one step, validation, checkpoint, exit); the same with the GAN stage (random VGG19, `loss.allow_random_vgg`).
Cold: a new empty cache folder per run (`JAX_COMPILATION_CACHE_DIR`); warm: a folder the first run filled. For the
training cases also the time from launch to the first step's progress line ("step 1/1 | ...").
``--baseline DIR`` (another jsr checkout, e.g. ``git worktree add /tmp/base REV``) times warm starts only, alternating
this checkout and DIR run by run (ABBA; each with its own filled cache): an A/B of a change to start-up. Cold runs
are left out there: a compiling run slows the warm run after it on a 2-core VM by up to 1.5 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# benchmarks/run.py (the machine's name) loaded by its path: a sys.path entry for benchmarks/ would shadow the tests'
# torch_reference module for the rest of a pytest process
_spec = importlib.util.spec_from_file_location("jsr_benchmarks_run", ROOT / "benchmarks" / "run.py")
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)


def commands(tmp: Path) -> dict[str, list[str]]:
    photo = tmp / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(photo)
    weights = tmp / "weights"
    if not weights.exists():  # the quickstart's architecture (8 x 32, bicubic skip), random weights
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); "
                "from helpers import make_generator_dir; "
                f"make_generator_dir({str(weights)!r}, seed=0, n_feats=32, num_blocks=8, scale=4)",
            ],
            check=True,
        )
    py = sys.executable
    train = [py, "-m", "jsr.train", f"--config={ROOT / 'configs' / 'quickstart.py'}", "--config.num_train_steps=1"]
    train += ["--config.eval_every_steps=1", "--config.checkpoint_every_steps=1"]
    return {
        "upscale_128": [
            py,
            "-m",
            "jsr.upscale",
            "--weights",
            str(weights),
            "--input",
            str(photo),
            "--output",
            "{out}/sr.png",
        ],
        "quickstart_1_step": [*train, "--workdir={out}/run"],
        "gan_1_step": [*train, "--config.stage=gan", "--config.loss.allow_random_vgg=True", "--workdir={out}/run"],
    }


FIRST_STEP_LINE = "step 1/"  # the trainer's progress line after its first step (1-step runs log at step 1)


def timed(cmd: list[str], cache: Path, out: Path, tree: Path | None = None) -> tuple[float, float | None]:
    """(whole command, launch -> the first training step's progress line or None) in seconds; ``tree``: the jsr
    checkout to run (default: the installed one)."""
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
    if tree is not None:  # that tree's jsr and configs (``-m`` puts the working directory first on sys.path)
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])
        cmd = [c.replace(str(ROOT), str(tree)) for c in cmd]
    env.pop("JSR_NO_COMPILE_CACHE", None)
    out.mkdir(parents=True, exist_ok=True)
    first_step = None
    start = time.perf_counter()
    with subprocess.Popen(
        [c.replace("{out}", str(out)) for c in cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tree,
    ) as proc:
        for line in proc.stdout:
            if first_step is None and line.startswith(FIRST_STEP_LINE):
                first_step = time.perf_counter() - start
        stderr = proc.stderr.read()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{stderr[-3000:]}")
    return seconds, first_step


def git_commit(tree: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def warm_ab(cmd: list[str], tmp: Path, trees: dict[str, Path], runs: int) -> dict:
    """Warm starts of ``cmd`` from each tree, alternated ABBA; per tree the launch -> first step times (training)
    or the whole command's (``measures`` says which), and their median."""
    times: dict[str, list[tuple[float, float | None]]] = {side: [] for side in trees}
    for side, tree in trees.items():
        timed(cmd, tmp / f"cache-{side}", tmp / f"fill-{side}", tree)
    for k in range(runs):
        for side in list(trees) if k % 2 == 0 else list(trees)[::-1]:
            times[side].append(timed(cmd, tmp / f"cache-{side}", tmp / f"{side}-{k}", trees[side]))
    first_step = all(first is not None for t in times.values() for _, first in t)
    report = {}
    for side, t in times.items():
        seconds = [first if first_step else whole for whole, first in t]
        report[side] = {"measures": "first_step" if first_step else "whole_command", "s": seconds}
        report[side]["median_s"] = statistics.median(seconds)
    return report


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--cases", default="upscale_128,quickstart_1_step,gan_1_step", help="comma-separated")
    p.add_argument("--baseline", type=Path, default=None, help="another jsr checkout: warm A/B against it")
    args = p.parse_args(argv)
    if args.baseline is not None and not (args.baseline / "jsr" / "__init__.py").is_file():
        p.error(f"--baseline {args.baseline} is not a jsr checkout (no jsr/__init__.py in it)")
    report = run.machine_record()
    if args.baseline is not None:
        report["baseline"] = str(args.baseline.resolve())
        report["baseline_commit"] = git_commit(args.baseline)
        report["this_commit"] = git_commit(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        every = commands(tmp)
        wanted = args.cases.split(",")
        if unknown := sorted(set(wanted) - set(every)):
            p.error(f"unknown --cases {unknown}; choose from {sorted(every)}")
        for name in wanted:
            cmd = every[name]
            if args.baseline is not None:
                report[name] = warm_ab(cmd, tmp / name, {"this": ROOT, "baseline": args.baseline}, args.runs)
                this, base = (report[name][side] for side in ("this", "baseline"))
                print(f"{name:20s} warm median: this {this['median_s']:6.2f} s, baseline {base['median_s']:6.2f} s")
                continue
            warm_cache = tmp / f"warm-{name}"
            timed(cmd, warm_cache, tmp / f"fill-{name}")  # fills the warm cache
            runs = {"cold": [], "warm": []}
            for k in range(args.runs):  # interleaved, so drift hits both alike
                runs["cold"].append(timed(cmd, tmp / f"cold-{name}-{k}", tmp / f"c-{name}-{k}"))
                runs["warm"].append(timed(cmd, warm_cache, tmp / f"w-{name}-{k}"))
            report[name] = {}
            for kind, times in runs.items():
                report[name][f"{kind}_s"] = [whole for whole, _ in times]
                report[name][f"{kind}_median_s"] = statistics.median(whole for whole, _ in times)
                if all(first is not None for _, first in times):
                    report[name][f"{kind}_first_step_s"] = [first for _, first in times]
                    report[name][f"{kind}_first_step_median_s"] = statistics.median(first for _, first in times)
            r = report[name]
            line = f"{name:20s} cold {r['cold_median_s']:6.2f} s   warm {r['warm_median_s']:6.2f} s"
            if "warm_first_step_median_s" in r:
                cold_first, warm_first = r["cold_first_step_median_s"], r["warm_first_step_median_s"]
                line += f"   first step: cold {cold_first:6.2f} s, warm {warm_first:6.2f} s"
            print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
