"""One evaluator: the numbers the trainer's validation logs (which choose best/) are the numbers jsr-evaluate
reports for that best/ on the same images."""

import json
import subprocess
import sys

import numpy as np
from PIL import Image
from skimage import data


def write_pairs(root, scale=4):
    """Real photo crops as HR/LR folder pairs (LR by Pillow bicubic, as the folder source would make it)."""
    hr_dir, lr_dir = root / "hr", root / "lr"
    hr_dir.mkdir(parents=True)
    lr_dir.mkdir()
    photos = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}
    for k, (name, photo) in enumerate(photos.items()):
        hr = np.ascontiguousarray(photo[40 + 8 * k : 40 + 8 * k + 88, 60 : 60 + 100, :3])
        Image.fromarray(hr).save(hr_dir / f"{name}.png")
        lr = Image.fromarray(hr).resize((100 // scale, 88 // scale), Image.Resampling.BICUBIC)
        lr.save(lr_dir / f"{name}.png")
    return hr_dir, lr_dir


def test_trainer_validation_equals_jsr_evaluate_on_best(tmp_path, repo_root):
    hr_dir, lr_dir = write_pairs(tmp_path / "val")
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    for k, photo in enumerate([data.astronaut(), data.rocket(), data.coffee()]):
        Image.fromarray(np.ascontiguousarray(photo[:96, :96, :3])).save(train_dir / f"t{k}.png")
    run = tmp_path / "run"
    trained = subprocess.run(
        [sys.executable, "-m", "jsr.train", f"--config={repo_root / 'configs' / 'quickstart.py'}:tiny",
         f"--workdir={run}", "--config.data.source=folder", f"--config.data.folder={train_dir}",
         f"--config.data.val_folder={hr_dir}", f"--config.data.val_lr_folder={lr_dir}", "--config.eval_max_images=0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    best = json.loads((run / "best" / "jsr_model.json").read_text())  # its scores are those of its step
    out = tmp_path / "eval"
    evaluated = subprocess.run(
        [sys.executable, "-m", "jsr.evaluate", "--model", f"best={run / 'best'}",
         "--dataset", f"pairs:{hr_dir},{lr_dir}", "--output", out, "--figures", "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    models = json.loads((out / "results.json").read_text())["models"]
    assert abs(models["best"]["mean"]["psnr_y"] - best["val/psnr_y"]) <= 1e-4
    assert abs(models["best"]["mean"]["ssim_y"] - best["val/ssim_y"]) <= 1e-6
    assert abs(models["bicubic"]["mean"]["psnr_y"] - best["val/bicubic_psnr_y"]) <= 1e-4
    assert abs(models["bicubic"]["mean"]["ssim_y"] - best["val/bicubic_ssim_y"]) <= 1e-6
