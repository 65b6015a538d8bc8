"""Delta-STN inside the real trainer: hyperparameters move, are logged and plotted, and survive a kill."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from jsr.checkpoints import load_model


def run(repo_root, workdir, *overrides, wait=True):
    cmd = [
        sys.executable,
        "-m",
        "jsr.train",
        f"--config={repo_root / 'configs' / 'quickstart_deltastn.py'}:tiny",
        f"--workdir={workdir}",
        *overrides,
    ]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_deltastn_tunes_logs_plots_and_resumes_after_kill(tmp_path, repo_root):
    reference = run(repo_root, tmp_path / "ref")
    assert reference.returncode == 0, reference.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in lines if "hp/rotation_deg" in m]
    assert len(logged) == 3
    for name in ("blur_sigma", "noise_sigma", "rotation_deg", "weight_decay"):
        first, last = logged[0][f"hp/{name}"], logged[-1][f"hp/{name}"]
        assert first != last, name  # the hyper steps (after steps 4 and 6) moved every hyperparameter
    assert logged[0]["hp/rotation_deg"] == pytest.approx(10.0, rel=1e-5)  # the configured start
    assert any("hyper_objective" in m for m in lines) and any("sigma/blur_sigma" in m for m in lines)
    with Image.open(tmp_path / "ref" / "hyperparameters.png") as plot:
        assert plot.size[1] > 4 * 150  # one panel per hyperparameter

    workdir = tmp_path / "killed"
    proc = run(repo_root, workdir, wait=False)
    deadline = time.time() + 240
    while not [p for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())
    assert proc.returncode == -signal.SIGKILL and saved[-1] < 6
    resumed = run(repo_root, workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at step {saved[-1]}" in resumed.stdout
    for a, b in zip(jax_leaves(load_model(workdir)[1]), jax_leaves(load_model(tmp_path / "ref")[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    final = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()][-2]
    for name in ("rotation_deg", "blur_sigma", "noise_sigma"):  # per-example degradations replayed after the kill
        assert final[f"hp/{name}"] == pytest.approx(logged[-1][f"hp/{name}"], rel=1e-6)


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]
