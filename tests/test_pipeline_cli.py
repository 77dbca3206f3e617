"""``make run``'s summary, one section helper at a time on hand-made outputs, and the CLIs' domain defaults.

The whole-graph run (tests/test_definitions.py) prints a real summary; here a fake result stands in for
``execute_in_process``'s, so the verdict, failure and exit-code rules are checked without training anything.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pandas as pd
import pytest

from pipelines import paper_trading, run_pipeline
from resources.state_home import StateHome
from tests.test_assets_unit import evaluation_reports, gate
from trading_assets.evaluation import SeedSweepReport, WalkForwardSettings
from trading_assets.training import AgentZooSettings, TrainingSettings

HOME = StateHome(Path("/synthetic/home"))
SWEEP_METRICS = ("validation_sharpe", "test_sharpe", "test_return", "test_max_drawdown")


class FakeResult:
    """What ``summarize`` reads from an in-process run result: stored outputs, check evaluations, events."""

    def __init__(self, outputs: dict, checks: list | None = None, events: list | None = None) -> None:
        self.outputs, self.checks, self.all_events = outputs, checks or [], events or []

    def asset_value(self, name: str):
        return self.outputs[name]  # KeyError: the step did not run

    def get_asset_check_evaluations(self) -> list:
        return self.checks


def check(asset: str, name: str, passed: bool, description: str = "") -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(asset),
        check_name=name,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
    )


def step_failure(step: str, error_class: str, message: str) -> SimpleNamespace:
    error = SimpleNamespace(cls_name=error_class, message=message)
    return SimpleNamespace(
        step_key=step, event_type_value="STEP_FAILURE", event_specific_data=SimpleNamespace(error=error)
    )


def evaluated_outputs(version: str, passed: bool) -> dict:
    """Backtest, stress, seed sweep and registered version of a candidate whose min_sharpe gate ``passed``."""
    outputs = evaluation_reports(version, passed)
    distribution = pd.DataFrame(
        {"min": 0.1, "p25": 0.2, "median": 0.3, "max": 0.4}, index=pd.Index(SWEEP_METRICS)
    )
    outputs["seed_sweep"] = SeedSweepReport(
        table=pd.DataFrame({"seed": [1, 2, 3]}),
        distribution=distribution,
        n_trials=4,
        deflated_sharpe=0.9,
        gate=(gate("seed_p25_sharpe", True),),
    )
    return outputs


GATE_CHECKS = [check("backtest", "min_sharpe", False), check("backtest", "max_drawdown", True)]


def test_a_rejected_candidate_is_a_verdict_not_a_failure():
    result = FakeResult(
        evaluated_outputs("3", passed=False),
        checks=[check("validated_daily_bars", "no_nulls", True), *GATE_CHECKS],
        events=[step_failure("backtest", "DagsterAssetCheckFailedError", "blocking check failed")],
    )
    text, ok = run_pipeline.summarize(result, HOME, "sqlite:///synthetic.db")
    lines = text.splitlines()
    assert ok  # only the gate failed: `make run` exits 0
    assert "Data checks : 1 passed, 0 failed" in lines
    assert "Promotion gate (1/2 checks passed):" in lines
    # Every gate result in order: the backtest's, then the stress tests' and the seed sweep's.
    gates = [line for line in lines if line.startswith("  [")]
    assert gates == [
        "  [FAIL] min_sharpe: min_sharpe missed",
        "  [PASS] max_drawdown: max_drawdown met",
        "  [PASS] stress_drawdown_limit: stress_drawdown_limit met",
        "  [PASS] seed_p25_sharpe: seed_p25_sharpe met",
    ]
    assert (
        "Verdict     : NOT PROMOTED — version 3 keeps alias 'challenger' only; 'champion' is unchanged"
        in lines
    )
    assert "Seed variance (3 seeds, 4 trials in the experiment):" in lines
    assert "    test_sharpe             0.10    0.20    0.30    0.40" in lines
    assert not any(line.startswith("FAILED steps") for line in lines)
    assert lines[:4] == ["", run_pipeline.RULE, "RL trading pipeline — run summary", run_pipeline.RULE]
    assert lines[-1] == run_pipeline.RULE


def test_a_promoted_candidate_names_its_alias_and_still_lists_broken_steps():
    outputs = {**evaluated_outputs("2", passed=True), "champion_model": {"version": "2"}}
    result = FakeResult(
        outputs,
        checks=GATE_CHECKS,
        events=[step_failure("walk_forward", "ValueError", "Traceback\nValueError: no windows\n")],
    )
    text, ok = run_pipeline.summarize(result, HOME, "sqlite:///synthetic.db")
    lines = text.splitlines()
    assert ok  # promoted: the gate passed even though an independent step broke
    assert (
        "Model       : rl_trading_agent version 2 = ppo_recipe seed 42 (validation's pick from the leaderboard), "
        "aliases: challenger, champion"
    ) in lines
    assert "Verdict     : PROMOTED — version 2 now holds alias 'champion'" in lines
    assert "FAILED steps: walk_forward (see the Dagster UI for details)" in lines
    assert "  walk_forward: ValueError: no windows" in lines


def test_a_run_broken_before_the_backtest_fails_and_points_at_the_uis():
    result = FakeResult({}, events=[step_failure("features", "KeyError", "KeyError: 'close'")])
    text, ok = run_pipeline.summarize(result, HOME, "sqlite:///synthetic.db")
    lines = text.splitlines()
    assert not ok
    assert "Data checks : 0 passed, 0 failed" in lines
    assert not any(line.startswith(("Promotion gate", "Verdict", "Training", "Model")) for line in lines)
    assert "FAILED steps: features (see the Dagster UI for details)" in lines
    assert any(f"DAGSTER_HOME={HOME.dagster_home} RL_TRADING_HOME={HOME.root}" in line for line in lines)
    assert any("--backend-store-uri sqlite:///synthetic.db" in line for line in lines)


def test_run_pipeline_help_shows_the_asset_config_defaults_and_overrides_only_what_is_given(capsys):
    with pytest.raises(SystemExit):
        run_pipeline.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"PPO training budget (default {TrainingSettings().total_timesteps})" in help_text
    assert f"training seed (default {TrainingSettings().seed})" in help_text
    assert f"(default {WalkForwardSettings().timesteps_per_window})" in help_text
    assert f"budget of each agent-zoo run (default {AgentZooSettings().timesteps})" in help_text

    assert run_pipeline.run_config_for(run_pipeline.parse_args([])) == {"ops": {}}
    config = run_pipeline.run_config_for(run_pipeline.parse_args(["--seed", "7", "--zoo-timesteps", "64"]))
    assert config == {
        "ops": {"trained_agent": {"config": {"seed": 7}}, "agent_zoo": {"config": {"timesteps": 64}}}
    }


def test_paper_trading_defaults_come_from_the_registry_and_the_monitoring_server():
    from pipelines.resources_by_env import MODEL_NAME
    from resources.mlflow_registry import CHALLENGER_ALIAS, CHAMPION_ALIAS, MlflowRegistryResource
    from trading_assets.config_defaults import default_of
    from trading_core.monitoring.server import MonitoringServer

    args = paper_trading.parse_args([])
    assert args.model_name == MODEL_NAME == MlflowRegistryResource.model_fields["model_name"].default
    assert (args.alias, args.fallback_alias, args.challenger_alias) == (
        CHAMPION_ALIAS,
        CHALLENGER_ALIAS,
        CHALLENGER_ALIAS,
    )
    assert args.monitor_host == default_of(MonitoringServer, "host")
    assert args.monitor_port == paper_trading.DEFAULT_MONITOR_PORT
