"""The two Delta-STN proofs run as tests: ridge regression against closed forms, digits against fixed settings."""

from __future__ import annotations

import json

import pytest

from jsr.deltastn.examples import digits, ridge


def test_ridge_matches_closed_forms(capsys):
    """Learned response Jacobian and hypergradient vs float64 closed forms; tuned lambda vs a dense grid."""
    ridge.main(["--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["jacobian_rel_error"] <= 0.05
    assert result["hypergrad_rel_error"] <= 0.05
    assert abs(result["val_loss_final"] / result["val_loss_best_grid"] - 1.0) <= 0.01
    assert result["lambda_init"] / result["lambda_final"] > 3  # lambda really moved, to the grid optimum's region
    assert abs(result["lambda_final"] - result["lambda_best_grid"]) < 0.25 * result["lambda_best_grid"]


def test_digits_short_schedule_beats_the_fixed_initial_setting(capsys):
    result = digits.main(["--steps", "1000", "--seeds", "0", "--trials", "0", "--json"])
    capsys.readouterr()
    summary = result["summary"]
    assert summary["delta-stn"]["test_loss"]["mean"] < summary["fixed"]["test_loss"]["mean"]
    assert summary["delta-stn"]["hyper_steps"]["mean"] == (1000 - 100) // 5
    assert "delta-stn" in digits.table(summary)


@pytest.mark.referee
@pytest.mark.slow
def test_short_known_answer_run_moves_the_blur_towards_the_hidden_truth(referee):
    """sr_degradation's tuning arm, 80 weight steps: the blur of the training degradation must rise from 0.3
    towards the hidden 1.2 of the tuning set (Set14), through the learned response only."""
    from jsr.deltastn import jit_steps
    from jsr.deltastn.examples import sr_degradation as example

    case = example.CASES["degradation"]
    data = example.load_data(referee)
    data = {"CBSD68": data["CBSD68"][:20], "Set14": data["Set14"]}
    stn = example.build(case, 80, 0.05)
    compiled = {"general": example.general_only(stn), "stn": jit_steps(stn)}
    state, trajectory = example.train(
        stn, compiled, data["CBSD68"], example.tuning_set(case, data, 0), 80, 0, tune=True
    )
    assert int(state.hyper_step) == (80 - stn.warmup_steps) // 2
    assert trajectory[0][1]["blur_sigma"] == pytest.approx(0.3, rel=1e-5)
    assert stn.hparams(state)["blur_sigma"] > 0.45, trajectory


@pytest.mark.referee
@pytest.mark.slow
def test_augmentation_study_fine_tunes_only_the_tail_and_tunes_the_augmentation(referee):
    """The seed study's Delta-STN row on leftthomas' released generator: the frozen body (and its BatchNorm
    statistics) stay bit-identical to the converted checkpoint, only the trained layers respond, the nine
    magnitudes move, and the fine-tuned tail scores differently from the released one on the tuning images."""
    import jax
    import numpy as np

    from jsr.deltastn.examples import augmentation_study

    study = augmentation_study.Study(referee, steps=8, limit=2)
    state, trajectory = study.train(0, tune=True)
    released = study.variables
    for name in ("conv01", "body_0", "body_4", "conv02"):
        for a, b in zip(jax.tree.leaves(state.params[name]), jax.tree.leaves(released["params"][name]), strict=True):
            np.testing.assert_array_equal(a, b)
    jax.tree.map(np.testing.assert_array_equal, state.model_state["batch_stats"], released["batch_stats"])
    assert sorted(state.response) == ["last_conv", "tail_0", "tail_1"]
    last = "last_conv", "conv", "kernel"
    assert not np.array_equal(state.params[last[0]][last[1]][last[2]], released["params"][last[0]][last[1]][last[2]])
    assert len(trajectory) > 2
    for name, start in augmentation_study.STUDY_VALUES.items():
        assert trajectory[0][1][name] == pytest.approx(start, rel=1e-5)
        assert trajectory[-1][1][name] != pytest.approx(start, rel=1e-6), name
    stats = augmentation_study.hypergradient_stats(study, state, seed=0, batches=3)
    assert set(stats) == set(augmentation_study.TUNED)
    assert all(np.isfinite(v["t"]) and v["std"] > 0 for v in stats.values())
    tuned = study.psnr_y(study.variables_of(state), study.data["tune"])
    plain = study.psnr_y(released, study.data["tune"])
    assert np.isfinite(tuned) and tuned != plain


@pytest.mark.referee
@pytest.mark.slow
def test_augmentation_study_command_writes_the_table_the_json_and_the_figure(referee, tmp_path, capsys):
    from PIL import Image

    from jsr.deltastn.examples import augmentation_study

    code = augmentation_study.main(
        ["--seeds", "0", "--steps", "4", "--trials", "1", "--referee", str(referee), "--out", str(tmp_path)]
        + ["--limit-images", "1"]
    )
    assert code == 0
    summary = json.loads((tmp_path / "augmentation_study.json").read_text())
    assert set(summary["table"]) == set(augmentation_study.ROWS)
    for row in summary["table"].values():
        assert set(row) == set(augmentation_study.COLUMNS)
        assert 0 < row["lpips_alex"]["mean"] < 1 and 20 < row["psnr_y"]["mean"] < 40
    table = (tmp_path / "augmentation_study.md").read_text()
    assert table.count("\n| ") == len(augmentation_study.ROWS) and "Delta-STN" in table and "LPIPS-alex" in table
    assert "random-search trials per seed: [1]" in table
    assert table in capsys.readouterr().out
    with Image.open(tmp_path / "augmentation_study.png") as figure:
        assert figure.size[1] > 9 * 150  # one panel per tuned magnitude
