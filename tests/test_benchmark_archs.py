"""Smoke test of benchmarks/rrdbnet.py (--quick: a 1-block RRDBNet on tiny shapes): every case and variant is in the
JSON with positive timings (none is asserted against another). The jsr side alone (--no-torch): the PyTorch side's
torch.compile variants take minutes with a cold inductor cache; its last real run is
benchmarks/results/2026-12-01-cpu-rrdbnet.json."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("jsr_benchmarks_rrdbnet", ROOT / "benchmarks" / "rrdbnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_report(bench, saved: dict, with_torch: bool) -> None:
    assert saved["machine"]["model_name"] and saved["versions"]["jax"]
    assert set(saved["cases"]) == set(bench.CASES)
    jsr_variants = {"infer_64": {"jsr_xla", "jsr_winograd"}, "train": {"jsr_fast"}}
    jsr_variants["infer_128"] = jsr_variants["infer_64"]
    bf16 = saved["settings"]["torch_bf16"]
    torch_variants = {v for v, (_, _, b) in bench.TORCH_VARIANTS.items() if bf16 or not b} if with_torch else set()
    for name, case in saved["cases"].items():
        assert set(case["variants"]) == jsr_variants[name] | torch_variants, name
        assert case["rounds"] == 2
        for variant in case["variants"].values():
            assert variant["median_s"] > 0 and variant["throughput"] > 0
            assert variant["compile_s"] >= 0 and len(variant["times_s"]) >= 2
        if with_torch:
            assert case["torch_fastest_float32"] in torch_variants
            assert case["ratio_best_float32"] > 0 and case["ratio_vs_eager"] > 0
            assert len(case["round_ratios_best_float32"]) == 2
    if with_torch:
        assert saved["versions"]["torch"]
        # the same weights on both sides
        assert saved["checks"]["infer_64_max_abs_diff_jsr_xla_vs_torch_eager"] < 1e-4
        first = saved["checks"]["train_first_l1_torch_eager"]
        assert abs(saved["checks"]["train_first_l1_jsr_fast"] - first) < 1e-4 * max(1.0, first)
    assert "| variant |" in saved["table_markdown"]


@pytest.mark.slow
def test_rrdbnet_benchmark_quick_without_torch(tmp_path):
    bench = load_benchmark()
    out = tmp_path / "rrdb.json"
    report = bench.main(["--quick", "--no-torch", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["cases"].keys() == report["cases"].keys()
    check_report(bench, saved, with_torch=False)


@pytest.mark.slow
def test_every_rgb_generator_is_benchmarked_quick_without_torch(tmp_path):
    """benchmarks/archs.py --quick: every registered RGB generator measured (jsr's two inference paths, the default
    the Upscaler picks named), the others listed with a reason."""
    from jsr import archs

    out = tmp_path / "archs.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "archs.py"), "--quick", "--no-torch", "--cases", "infer_64"]
    result = subprocess.run([*command, "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads(out.read_text())
    # the built-in ones (a test module may have registered its own in this process)
    generators = {
        n for n, a in archs.REGISTRY.items() if a.role == "generator" and a.module.__module__.startswith("jsr.")
    }
    skipped = {s["arch"] for s in saved["skipped_archs"]}
    assert {a for a in saved["archs"] if a in generators} | skipped == generators
    assert {"vdsr", "fsrcnn"} <= skipped and "rrdbnet" in saved["archs"] and "srresnet" in saved["archs"]
    for name, entry in saved["archs"].items():
        case = entry["cases"]["infer_64"]
        assert set(case["variants"]) == {"jsr_xla", "jsr_winograd"}, name
        assert all(v["median_s"] > 0 for v in case["variants"].values())
        registered = archs.get(name if name in archs.REGISTRY else entry["network"]["arch"])
        assert case["jsr_default"] == ("jsr_winograd" if registered.cpu_winograd else "jsr_xla"), name
