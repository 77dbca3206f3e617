"""The gate over a candidate's runs: each criterion passes and fails on the right side of its threshold; and
promotion bound to its evidence: only the run that registered a version, with passing gate records of that
version from that same run, may promote it."""

from __future__ import annotations

import pytest

from resources.mlflow_registry import (
    CHAMPION_ALIAS,
    PREVIOUS_ALIAS,
    REGISTERED_BY_TAG,
    MlflowRegistryResource,
    PromotionRefused,
)
from trading_core.evaluation.promotion import (
    CandidateThresholds,
    GateRecord,
    GateResult,
    judge_candidate,
    promotion_refusal,
)


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


# ------------------------------------------------------------------------ evidence binding of the promotion

STEPS = ("backtest", "stress_tests", "seed_sweep")


def records(version: str = "3", run_id: str = "run-a", **failed: tuple[str, ...]) -> list[GateRecord]:
    """One record per gate step of ``version`` from ``run_id``; ``failed`` names a step's failed criteria."""
    return [GateRecord(step, version, run_id, failed.get(step, ())) for step in STEPS]


def test_promotion_allowed_only_with_own_passing_records_of_this_run():
    assert promotion_refusal("3", "run-a", "run-a", records(), STEPS) is None
    # The same step read twice (its output and the registry's record) is fine when both agree.
    assert promotion_refusal("3", "run-a", "run-a", records() + records(), STEPS) is None


@pytest.mark.parametrize(
    ("registered_by", "evidence", "reason"),
    [
        ("run-b", records(), "version 3 was registered by run run-b, not this run run-a"),
        (None, records(), "version 3 was registered by run unknown, not this run run-a"),
        ("run-a", records()[:2], "no seed_sweep gate record for version 3"),
        (
            "run-a",
            [],
            "no backtest gate record for version 3; no stress_tests gate record for version 3; no "
            "seed_sweep gate record for version 3",
        ),
        (
            "run-a",
            records()[:2] + records(version="4")[2:],
            "the seed_sweep gate record is of version 4, not 3",
        ),
        (
            "run-a",
            records()[:1] + records(run_id="run-b")[1:],
            "the stress_tests gate record of version 3 is from run run-b, not this run run-a; the seed_sweep gate "
            "record of version 3 is from run run-b, not this run run-a",
        ),
        ("run-a", records(backtest=("min_sharpe", "max_var_95")), "backtest failed min_sharpe, max_var_95"),
    ],
)
def test_promotion_refused_with_every_reason_named(registered_by, evidence, reason):
    assert promotion_refusal("3", "run-a", registered_by, evidence, STEPS) == reason


def test_a_foreign_record_refuses_even_beside_a_good_one():
    # Another run re-judged the version after this run did: the registry holds both readings of the step.
    evidence = records() + [GateRecord("backtest", "3", "run-b")]
    assert promotion_refusal("3", "run-a", "run-a", evidence, STEPS) == (
        "the backtest gate record of version 3 is from run run-b, not this run run-a"
    )


def test_gate_record_round_trips_through_registry_tags_and_bad_tags_are_named():
    gate = [
        GateResult("min_sharpe", False, 0.2, 1.0, "Sharpe 0.20 vs required >= 1.00"),
        GateResult("max_drawdown", True, 0.1, 0.15, "max drawdown 10.0% vs allowed <= 15.0%"),
    ]
    record = GateRecord.of("backtest", "7", "run-a", gate)
    assert record.failed == ("min_sharpe",) and not record.passed
    tags = {record.tag_key: record.tag_value(), "algorithm": "ppo", "promotion_gate": "rejected: ..."}
    assert GateRecord.from_tags(tags) == [record]
    with pytest.raises(ValueError, match="gate record tag 'gate.seed_sweep' does not parse"):
        GateRecord.from_tags({"gate.seed_sweep": '{"version": "7"}'})


def test_registry_promotes_only_on_its_own_records_of_this_run(tmp_path):
    registry = MlflowRegistryResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=(tmp_path / "artifacts").as_uri()
    )
    client = registry._client()

    def register(dagster_run: str) -> str:
        run = client.create_run(registry.experiment_id())
        source = f"runs:/{run.info.run_id}/model"
        return registry.register(source, run.info.run_id, tags={REGISTERED_BY_TAG: dagster_run}).version

    first = register("run-a")
    for record in records(first, "run-a"):
        registry.record_gate(record)
    assert registry.promote(first, "run-a", STEPS) is None
    assert registry.version_for_alias(CHAMPION_ALIAS) == first

    # Run b registered a version, but run c judged it (the interleaving of two runs on one store): refused.
    second = register("run-b")
    for record in records(second, "run-c"):
        registry.record_gate(record)
    with pytest.raises(
        PromotionRefused, match=f"rl_trading_agent v{second}: the backtest gate record of version"
    ):
        registry.promote(second, "run-b", STEPS)
    with pytest.raises(
        PromotionRefused, match=f"version {second} was registered by run run-b, not this run run-c"
    ):
        registry.promote(second, "run-c", STEPS)
    assert (
        registry.version_for_alias(CHAMPION_ALIAS) == first
        and registry.version_for_alias(PREVIOUS_ALIAS) is None
    )

    # Once run b's own steps judged it (their records replace the foreign ones), run b may promote it.
    for record in records(second, "run-b"):
        registry.record_gate(record)
    assert registry.promote(second, "run-b", STEPS) == first
    assert (
        registry.version_for_alias(CHAMPION_ALIAS) == second
        and registry.version_for_alias(PREVIOUS_ALIAS) == first
    )
