"""The gate over a candidate's runs: each criterion passes and fails on the right side of its threshold."""

from __future__ import annotations

import pytest

from trading_core.evaluation.promotion import CandidateThresholds, judge_candidate


def test_candidate_passing_every_criterion():
    verdict = judge_candidate(
        "sac", [0.8, 1.0, 1.2, 1.4], [0.05, 0.1, 0.12, 0.08], 1.2, 0.9, 0.7, CandidateThresholds()
    )
    assert verdict.passed
    assert verdict.p25_sharpe == pytest.approx(0.95)
    assert verdict.median_sharpe == pytest.approx(1.1)
    assert verdict.worst_drawdown == pytest.approx(0.12)
    assert verdict.row()["verdict"] == "pass"


@pytest.mark.parametrize(
    ("sharpes", "drawdowns", "representative", "dsr", "benchmark", "failed"),
    [
        ([1.0, 1.0], [0.1, 0.1], 0.99, 0.9, 0.5, ["min_sharpe"]),
        ([0.1, 0.1, 2.0, 2.0], [0.1] * 4, 2.0, 0.9, 0.5, ["p25_sharpe"]),
        ([1.0, 1.0], [0.1, 0.16], 1.0, 0.9, 0.5, ["max_drawdown"]),
        ([1.0, 1.0], [0.1, 0.1], 1.0, 0.49, 0.5, ["deflated_sharpe"]),
        ([1.0, 1.0], [0.1, 0.1], 1.0, 0.9, 1.0, ["beats_buy_and_hold"]),
    ],
)
def test_each_criterion_fails_on_its_own(sharpes, drawdowns, representative, dsr, benchmark, failed):
    verdict = judge_candidate("x", sharpes, drawdowns, representative, dsr, benchmark, CandidateThresholds())
    assert not verdict.passed
    assert [g.name for g in verdict.gate if not g.passed] == failed
    assert verdict.row()["verdict"] == "fail: " + ", ".join(failed)


def test_buy_and_hold_criterion_can_be_switched_off_and_bad_input_is_named():
    thresholds = CandidateThresholds(must_beat_buy_and_hold=False)
    assert judge_candidate("x", [1.0], [0.1], 1.0, 0.9, 5.0, thresholds).passed
    assert judge_candidate("flat", [0.0], [-0.0], 0.0, 0.0, 0.0, thresholds).worst_drawdown == 0.0
    with pytest.raises(ValueError, match="x: need one drawdown per Sharpe"):
        judge_candidate("x", [1.0, 2.0], [0.1], 1.0, 0.9, 0.0, thresholds)
