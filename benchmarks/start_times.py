"""Cold and warm start of jsr's commands: whole-process wall time with an empty vs a filled compilation cache.

    python benchmarks/start_times.py [--runs 3] [--json out.json]

Cases: `jsr-upscale` of one 128x128 photo; the quickstart trained for 1 step (MSE, whole command: start, compile,
one step, validation, checkpoint, exit); the same with the GAN stage (random VGG19, `loss.allow_random_vgg`).
Cold: a new empty cache folder per run (`JAX_COMPILATION_CACHE_DIR`); warm: a folder the first run filled.
"""

from __future__ import annotations

import argparse
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


def timed(cmd: list[str], cache: Path, out: Path) -> float:
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache)}
    env.pop("JSR_NO_COMPILE_CACHE", None)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    done = subprocess.run([c.replace("{out}", str(out)) for c in cmd], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{done.stderr[-3000:]}")
    return seconds


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, cmd in commands(tmp).items():
            warm_cache = tmp / f"warm-{name}"
            timed(cmd, warm_cache, tmp / f"fill-{name}")  # fills the warm cache
            cold, warm = [], []
            for k in range(args.runs):  # interleaved, so drift hits both alike
                cold.append(timed(cmd, tmp / f"cold-{name}-{k}", tmp / f"c-{name}-{k}"))
                warm.append(timed(cmd, warm_cache, tmp / f"w-{name}-{k}"))
            report[name] = {
                "cold_s": cold,
                "warm_s": warm,
                "cold_median_s": statistics.median(cold),
                "warm_median_s": statistics.median(warm),
            }
            print(
                f"{name:20s} cold {statistics.median(cold):6.2f} s   warm {statistics.median(warm):6.2f} s", flush=True
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
