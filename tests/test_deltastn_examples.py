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
