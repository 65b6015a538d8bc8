"""Smoke test of benchmarks/run.py on tiny shapes: it runs end to end and writes the documented JSON (no timings
are asserted)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_run(name="run"):
    spec = importlib.util.spec_from_file_location(f"jsr_benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_run_quick_writes_side_by_side_json(tmp_path):
    run = load_run()
    torch_python = run.find_torch_python(None)
    argv = ["--quick", "--cases", "train_mse,infer_128", "--repeats", "1", "--rounds", "2"]
    argv += ["--torch-variants", "eager,channels_last"]  # torch.compile variants cost ~1 min each: benchmark runs only
    argv += ["--json", str(tmp_path / "out.json")]
    report = run.main(argv + ([] if torch_python else ["--no-torch"]))
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["cases"].keys() == report["cases"].keys() == {"train_mse", "infer_128"}
    assert saved["machine"] and saved["versions"]["jax"]
    for case in saved["cases"].values():
        assert case["jsr"] > 0
        assert case["jsr_detail"]["compile_s"] >= 0
        assert case["jsr_detail"]["flops"] > 0 and case["jsr_detail"]["achieved_flops_per_s"] > 0
        assert len(case["jsr_detail"]["times_s"]) == 2  # one repetition in each of two rounds
        if torch_python:
            assert case["torch"] > 0 and abs(case["ratio"] - case["jsr"] / case["torch"]) < 1e-9
            assert len(case["torch_detail"]["times_s"]) == 2 and len(case["round_ratios"]) == 2
            assert set(case["torch_variants"]) == {"eager", "channels_last"}
            applied = {v: d["applied"] for v, d in case["torch_variants"].items()}  # read back from torch's objects
            assert applied["channels_last"]["channels_last_weights"] and applied["channels_last"]["channels_last_input"]
            assert not applied["eager"]["channels_last_weights"] and not applied["eager"]["compiled"]
            fastest = max(v["throughput"] for v in case["torch_variants"].values())
            assert case["torch_variants"][case["torch_best"]]["throughput"] == fastest
            assert abs(case["ratio_best"] - case["jsr"] / fastest) < 1e-9
    if torch_python:
        assert saved["versions"]["torch"]
    assert saved["cases"]["infer_128"]["jsr_detail"]["conv"] == "winograd"  # the Upscaler's CPU default


def test_winograd_benchmark_measures_both_and_their_errors():
    result = load_run("winograd").run_case(side=16, cin=16, cout=24, pairs=2)
    assert result["xla_ms"] > 0 and result["winograd_ms"] > 0 and result["median_pair_ratio"] > 0
    assert 0 < result["relative_error"]["winograd"] < 1e-4 and result["relative_error"]["xla"] < 1e-5


def test_bf16_gradients_compares_every_parameter_with_float32(tmp_path):
    report = load_run("bf16_gradients").main(["--quick", "--conv", "xla", "--json", str(tmp_path / "g.json")])
    assert json.loads((tmp_path / "g.json").read_text())["relative_error"] == report["relative_error"]
    generator = report["relative_error"]["generator"]
    assert (
        "['conv01']['conv']['kernel']" in generator and "['body_0']['conv1']['conv']['bias']" not in generator
    )  # BN next
    assert all(0 < error < 1 for error in report["by_kind"]["generator"]["kernel"].values() if isinstance(error, float))
    assert generator["['tail_1_prelu']['negative_slope']"] < 0.05  # a float32 sum: bfloat16's was ~0.5 off


def test_trainer_loop_measures_the_real_iterator():
    assert load_run("trainer_loop").main(["--batch", "4", "--steps", "20"]) > 0


@pytest.mark.slow
def test_bn_prelu_benchmark_times_three_blocks_and_checks_the_fused_one():
    shape = ["--batch", "2", "--patch", "12", "--n_feats", "16", "--num_blocks", "2"]
    report = load_run("bn_prelu").main(["--pairs", "1", *shape])
    assert set(report["median_ms"]) == {"flax", "fused", "none"} and min(report["median_ms"].values()) > 0
    error = report["fused_relative_error"]
    assert error["output"] < 1e-5 and error["batch_stats"] < 1e-5 and 0 < error["gradient"] < 1e-3


def test_profile_groups_ops_by_what_they_compute():
    profile_step = load_run("profile_step")
    group = profile_step.group
    convolutions = ["custom-call__onednn$convolution", "convolution", "wrapped_convolution", "aten::mkldnn_convolution"]
    convolutions += ["aten::convolution_backward", "conv_general_dilated"]
    assert {group(op) for op in convolutions} == {"convolution"}
    assert {group(op) for op in ["dot_general", "dot", "aten::addmm", "aten::mm", "aten::bmm"]} == {"matmul"}
    others = ["convert_reduce_fusion", "wrapped_reduce-window", "transpose_copy_fusion", "aten::native_batch_norm"]
    others += ["aten::_prelu_kernel_backward", "Optimizer.step#Adam.step", "ynn_fusion", "aten::add_"]
    assert {group(op) for op in others} == {"other"}
    assert {group(op) for op in ["ThunkExecutor::Execute", "end: copy", "while", "SlinkyThreadPool::Await"]} == {None}

    # XLA thunks are grouped by what their instruction computes, whatever XLA named the fusion
    import jax
    import jax.numpy as jnp

    def work(x, w, a, b):
        conv = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(conv) * 2, jnp.tanh(a @ b) + 1, jnp.sum(a * 3)

    shapes = [(2, 8, 8, 4), (3, 3, 4, 5), (16, 16), (16, 16)]
    hlo = jax.jit(work).lower(*[jnp.ones(s) for s in shapes]).compile().as_text()
    groups = profile_step.hlo_groups(hlo)
    assert set(groups.values()) == {"convolution", "matmul", "other"}
    conv_lines = [line for line in hlo.splitlines() if " convolution(" in line]
    assert conv_lines and all(groups[line.split("%")[1].split(" ")[0]] == "convolution" for line in conv_lines)
    assert profile_step.op_kind("custom-call.162.clone__onednn$convolution") == "custom-call__onednn$convolution"


@pytest.mark.slow
def test_profile_step_profiles_both_sides(tmp_path):
    profile_step = load_run("profile_step")
    torch_python = profile_step.run.find_torch_python(None)
    argv = ["--quick", "--steps", "2", "--json", str(tmp_path / "profile.json")]
    report = profile_step.main(argv + ([] if torch_python else ["--no-torch"]))
    saved = json.loads((tmp_path / "profile.json").read_text())
    sides = ["jsr", "torch"] if torch_python else ["jsr"]
    for side in sides:
        assert saved[side]["wall_ms"] > 0 and saved[side]["groups_ms"]["convolution"] > 0
        assert set(saved[side]["groups_ms"]) == {"convolution", "matmul", "other"}
        assert saved[side]["top_ops_ms"] and min(saved[side]["top_ops_ms"].values()) >= 0
    assert report["jsr"]["conv"] == "winograd"  # resolved as training resolves float32 SRResNet on a CPU


@pytest.mark.slow
def test_start_times_baseline_runs_the_other_checkout(tmp_path, capsys, monkeypatch):
    start_times = load_run("start_times")
    with pytest.raises(SystemExit):
        start_times.main(["--cases", "upscale_128", "--baseline", str(tmp_path)])  # not a jsr checkout
    assert "not a jsr checkout" in capsys.readouterr().err
    other = tmp_path / "other"  # a checkout whose jsr-upscale only says where it came from
    (other / "jsr").mkdir(parents=True)
    (other / "jsr" / "__init__.py").write_text("")
    (other / "jsr" / "upscale.py").write_text(
        "import os\nwith open(os.environ['OTHER_LOG'], 'a') as log:\n    log.write(__file__ + '\\n')\n"
    )
    monkeypatch.setenv("OTHER_LOG", str(tmp_path / "other.log"))
    out = tmp_path / "ab.json"
    start_times.main(["--cases", "upscale_128", "--runs", "2", "--baseline", str(other), "--json", str(out)])
    case = json.loads(out.read_text())["upscale_128"]
    assert set(case) == {"this", "baseline"}
    for side in case.values():
        assert side["measures"] == "whole_command" and len(side["s"]) == 2 and all(t > 0 for t in side["s"])
        assert side["median_s"] == sum(side["s"]) / 2
    ran = (tmp_path / "other.log").read_text().splitlines()  # its cache filled once, then its two warm runs
    assert ran == [str(other / "jsr" / "upscale.py")] * 3
