"""The two Delta-STN proofs run as tests: ridge regression against closed forms, digits against fixed settings."""

from __future__ import annotations

import json

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
