"""config.cpu_onednn: oneDNN's CPU convolutions for bfloat16 runs (jsr.onednn), through the real trainer."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import read_metrics, train_cli

from jsr import onednn
from jsr.checkpoints import read_description

CPUINFO_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n"
CPUINFO_PLAIN = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
CPUINFO_ARM = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd bf16 i8mm sve\n"


@pytest.mark.parametrize(
    "choice,dtype,cpuinfo,expected",
    [
        ("auto", "bfloat16", CPUINFO_BF16, True),
        ("auto", "float32", CPUINFO_BF16, False),  # float32 Winograd steps are slower with oneDNN
        ("auto", "bfloat16", CPUINFO_PLAIN, False),
        ("auto", "bfloat16", None, False),  # no /proc/cpuinfo: unknown CPU
        ("on", "float32", CPUINFO_PLAIN, True),
        ("off", "bfloat16", CPUINFO_BF16, False),
    ],
)
def test_wanted_reads_the_cpu_flags(tmp_path, choice, dtype, cpuinfo, expected):
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    assert onednn.wanted(choice, dtype, path) is expected


@pytest.mark.parametrize(
    "dtype,backend,cpuinfo,warned",
    [
        ("bfloat16", "cpu", CPUINFO_PLAIN, True),
        ("bfloat16", "cpu", CPUINFO_BF16, False),
        ("bfloat16", "gpu", CPUINFO_PLAIN, False),
        ("float32", "cpu", CPUINFO_PLAIN, False),
        ("bfloat16", "cpu", CPUINFO_ARM, False),  # not measured there: nothing said
        ("bfloat16", "cpu", None, False),  # no /proc/cpuinfo: unknown CPU
    ],
)
def test_bfloat16_on_a_cpu_without_bf16_dot_units_is_told_it_is_slower(tmp_path, dtype, backend, cpuinfo, warned):
    if cpuinfo is not None:
        (tmp_path / "cpuinfo").write_text(cpuinfo)
    note = onednn.slow_bf16_note(dtype, backend, tmp_path / "cpuinfo")
    assert (note is not None) is warned
    assert note is None or ("SLOWER than float32" in note and "compute_dtype" in note and "\n" not in note)


def test_an_unknown_choice_names_the_field():
    with pytest.raises(ValueError, match=r"cpu_onednn='yes': choose from \('auto', 'on', 'off'\)"):
        onednn.wanted("yes", "bfloat16")


SCRIPT = """
import os, sys
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from jsr import onednn

before = os.environ.get("XLA_FLAGS", "")
on = onednn.configure("on", "bfloat16")
assert on and onednn.active(), os.environ.get("XLA_FLAGS")
assert os.environ["XLA_FLAGS"].startswith(before)  # the user's flags are kept
conv = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
x = jax.random.normal(jax.random.key(0), (2, 16, 16, 32))
k = jax.random.normal(jax.random.key(1), (3, 3, 32, 64)) / np.sqrt(9 * 32)
with jax.default_matmul_precision("highest"):
    reference = np.asarray(jax.jit(conv)(x, k))
xb, kb = x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)
taken = "__onednn$convolution" in jax.jit(conv).lower(xb, kb).compile().as_text()
# jax 0.10 accepts the flags and keeps XLA's own convolutions; oneDNN's bf16 kernels need x86 bf16 instructions
new_jax = tuple(int(p) for p in jax.__version__.split(".")[:2]) >= (0, 12)
assert taken or not (new_jax and onednn.cpu_has_bf16_dot()), jax.__version__
half = np.asarray(jax.jit(conv)(xb, kb).astype(jnp.float32))
error = np.linalg.norm(half - reference) / np.linalg.norm(reference)
assert 1e-4 < error < 1e-2, error  # bfloat16 inputs: ~3e-3
assert onednn.configure("on", "bfloat16")  # already on: nothing added twice
assert os.environ["XLA_FLAGS"].split().count(onednn.FLAGS[0]) == 1
print("ok", error, taken)
"""


def test_configure_before_jax_starts_and_bf16_convs_stay_bf16_accurate():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok")


def test_flags_the_user_set_in_any_value_stand(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_cpu_use_onednn=false")
    assert onednn.configure("on", "bfloat16") is False  # before touching JAX: the user's 'false' is kept
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4 --xla_cpu_use_onednn=false"


def test_configure_after_jax_started_says_so_and_changes_nothing(capsys):
    import jax

    jax.devices()  # this test process's backend is running
    flags = os.environ.get("XLA_FLAGS", "")
    assert onednn.configure("on", "bfloat16") is False
    assert os.environ.get("XLA_FLAGS", "") == flags
    assert "JAX had already started" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.each_jax
def test_bf16_training_with_onednn_matches_xla_bf16(tmp_path, repo_root):
    """The trainer CLI in bfloat16 with oneDNN's convolutions (where this jax hands them over) and with XLA's own:
    both finish, record how they ran, and train to the same losses within bfloat16's rounding."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    flag_lines = [line.split(":", 1)[-1].split() for line in text.splitlines() if line.startswith("flags")]
    told = bool(flag_lines) and not {"avx512_bf16", "amx_bf16"} & {flag for line in flag_lines for flag in line}
    runs = {}
    for choice in ("on", "off"):
        workdir = tmp_path / choice
        overrides = ("--config.compute_dtype=bfloat16", f"--config.cpu_onednn={choice}", "--config.model.conv=auto")
        result = train_cli(repo_root, workdir, *overrides)
        assert result.returncode == 0, result.stderr[-3000:]
        description = read_description(workdir)
        assert description["cpu_onednn"] is (choice == "on")
        assert description["conv"] == ("onednn" if choice == "on" else "fast")  # 'auto' on a CPU
        assert description["compute_dtype"] == "bfloat16"
        assert ("SLOWER than float32" in result.stdout) is told, result.stdout[-2000:]
        runs[choice] = [m for m in read_metrics(workdir) if "g_loss" in m]
    on, off = ([m["g_loss"] for m in runs[c]] for c in ("on", "off"))
    assert len(on) == len(off) > 0
    for a, b in zip(on, off, strict=True):
        assert abs(a - b) <= 0.03 * abs(b), (on, off)
    val = {c: [m for m in read_metrics(tmp_path / c) if "val/psnr_y" in m][-1]["val/psnr_y"] for c in ("on", "off")}
    assert abs(val["on"] - val["off"]) < 0.1, val


def test_bad_cpu_onednn_is_a_one_line_usage_error(tmp_path, repo_root):
    result = train_cli(repo_root, tmp_path / "run", "--config.cpu_onednn=fast")
    assert result.returncode == 2
    assert "config.cpu_onednn='fast': choose from ('auto', 'on', 'off')" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
