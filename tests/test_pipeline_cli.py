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
    error = SimpleNamespace(cls_name=error_class, message=message, cause=None)
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
        version=version,
        dagster_run_id=outputs["registered_model"].dagster_run_id,
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
    outputs = {**evaluated_outputs("2", passed=True), "champion_model": {"version": "2", "promoted": True}}
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
    assert "  step 'walk_forward' failed: ValueError: no windows" in lines


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


# ------------------------------------------------------------------- bad input is refused before any work

PIPELINE_VARIABLES = (
    "RL_TRADING_ENV",
    "RL_TRADING_TICKERS",
    "RL_TRADING_START_DATE",
    "RL_TRADING_END_DATE",
    "RL_TRADING_DATA_PATH",
    "RL_TRADING_VIX_PATH",
    "RL_TRADING_ALPACA_DATA_URL",
    "RL_TRADING_STATE_DB_URL",
    "MLFLOW_TRACKING_URI",
    "RAY_ADDRESS",
    "ALPACA_API_KEY",
    "APCA_API_KEY_ID",
    "ALPACA_SECRET_KEY",
    "APCA_API_SECRET_KEY",
)


@pytest.fixture()
def fresh_home(monkeypatch, tmp_path) -> Path:
    """A state home that does not exist yet, and none of the pipeline's variables set."""
    for name in PIPELINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("RL_TRADING_HOME", str(home))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return home


def refused(argv: list[str], capsys) -> list[str]:
    """``make run``'s stderr lines for ``argv``, after checking it exits 2 and prints nothing on stdout."""
    try:
        status = run_pipeline.main(argv)
    except SystemExit as exit_:  # a value that does not parse: argparse exits
        status = exit_.code
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    return captured.err.splitlines()


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--timesteps", "-5"], "--timesteps -5: expected a whole number > 0"),
        (["--seed", "-1"], "--seed -1: expected a whole number in [0, 4294967296)"),
        (["--walk-forward-timesteps", "0"], "--walk-forward-timesteps 0: expected a whole number > 0"),
        (["--zoo-timesteps", "-64"], "--zoo-timesteps -64: expected a whole number > 0"),
        (["--timesteps", "many"], "argument --timesteps: 'many': expected a whole number"),
        (["--train-end", "2010-02-30"], "argument --train-end: '2010-02-30': expected a date YYYY-MM-DD"),
        (
            ["--train-end", "2010-01-01", "--validation-end", "2009-06-30"],
            "--validation-end 2009-06-30: expected a date after --train-end 2010-01-01",
        ),
        (
            ["--train-end", "1999-12-31"],
            "--train-end 1999-12-31: expected a date after the first bar 2000-03-01",
        ),
        (
            ["--validation-end", "2013-03-01"],
            "--validation-end 2013-03-01: expected a date before the last bar 2013-03-01 (the test period follows it)",
        ),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_each_bad_argument_is_one_line_and_exit_2_before_any_store_is_touched(fresh_home, capsys, argv, line):
    assert refused(argv, capsys) == [f"make run: {line}"]
    assert not fresh_home.exists()  # no Dagster instance, no MLflow store, no run


def test_every_bad_argument_is_reported_not_just_the_first(fresh_home, capsys):
    lines = refused(
        ["--timesteps", "-5", "--seed", "-2", "--train-end", "2011-01-01", "--validation-end", "2010-01-01"],
        capsys,
    )
    assert lines == [
        "make run: --timesteps -5: expected a whole number > 0",
        "make run: --seed -2: expected a whole number in [0, 4294967296)",
        "make run: --validation-end 2010-01-01: expected a date after --train-end 2011-01-01",
    ]


def test_a_bad_allow_list_is_named_with_its_column(fresh_home, capsys, tmp_path):
    assert refused(["--split-allow-list", str(tmp_path)], capsys) == [
        f"make run: --split-allow-list {tmp_path}: allow-list {tmp_path} is a directory; expected a CSV file with "
        "columns tic, date"
    ]
    allow_list = tmp_path / "allow.csv"
    allow_list.write_text("ticker,date\nAAPL,2000-09-29\n")
    assert refused(["--split-allow-list", str(allow_list)], capsys) == [
        f"make run: --split-allow-list {allow_list}: allow-list {allow_list}: missing column(s) tic; present: "
        "ticker, date"
    ]
    assert not fresh_home.exists()


def _env_cases(tmp_path: Path) -> list[tuple[dict[str, str], str]]:
    folder = tmp_path / "data"
    folder.mkdir()
    text = tmp_path / "bars.txt"
    text.write_text("date,tic\n")
    no_volume = tmp_path / "no_volume.csv"
    no_volume.write_text("date,tic,open,high,low,close\n2020-01-02,AAPL,1,1,1,1\n")
    a_file = tmp_path / "home_is_a_file"
    a_file.write_text("")
    formats = ".csv, .csv.gz or .parquet bars file"
    return [
        ({"RL_TRADING_ENV": "paper"}, "RL_TRADING_ENV='paper': expected one of local, file, alpaca"),
        (
            {"RL_TRADING_ENV": "file"},
            f"RL_TRADING_DATA_PATH is not set: expected the path of a {formats} (RL_TRADING_ENV=file)",
        ),
        (
            {"RL_TRADING_ENV": "file", "RL_TRADING_DATA_PATH": str(folder)},
            f"RL_TRADING_DATA_PATH='{folder}': expected a {formats}, not a directory",
        ),
        (
            {"RL_TRADING_ENV": "file", "RL_TRADING_DATA_PATH": str(text)},
            f"RL_TRADING_DATA_PATH='{text}': expected a {formats}",
        ),
        (
            {"RL_TRADING_ENV": "file", "RL_TRADING_DATA_PATH": str(tmp_path / "missing.csv")},
            f"RL_TRADING_DATA_PATH='{tmp_path / 'missing.csv'}': expected an existing {formats} (no such file)",
        ),
        (
            {"RL_TRADING_ENV": "file", "RL_TRADING_DATA_PATH": str(no_volume)},
            f"RL_TRADING_DATA_PATH='{no_volume}': expected a {formats} with columns date, tic, open, high, low, "
            "close, volume; missing column(s) volume",
        ),
        (
            {"RL_TRADING_START_DATE": "yesterday"},
            "RL_TRADING_START_DATE='yesterday': expected a date YYYY-MM-DD",
        ),
        (
            {"RL_TRADING_START_DATE": "2010-01-01", "RL_TRADING_END_DATE": "2009-01-01"},
            "RL_TRADING_END_DATE='2009-01-01': expected a date after the start date 2010-01-01",
        ),
        (
            {"RL_TRADING_START_DATE": "2030-01-01"},
            "RL_TRADING_START_DATE='2030-01-01': expected a date on or before the last bar, 2013-03-01",
        ),
        (
            {"RL_TRADING_TICKERS": "AAPL,TSLA"},
            "RL_TRADING_TICKERS='AAPL,TSLA': expected tickers of bokeh-sampledata stocks; unknown: TSLA; "
            "available: AAPL, FB, GOOG, IBM, MSFT",
        ),
        (
            {
                "RL_TRADING_ENV": "alpaca",
                "RL_TRADING_TICKERS": "AAPL",
                "RL_TRADING_START_DATE": "2019-01-01",
                "ALPACA_API_KEY": "sekrit-key-value",
            },
            "ALPACA_SECRET_KEY is not set: expected the Alpaca secret key (or APCA_API_SECRET_KEY) "
            "(RL_TRADING_ENV=alpaca)",
        ),
        (
            {
                "RL_TRADING_ENV": "alpaca",
                "RL_TRADING_START_DATE": "2019-01-01",
                "ALPACA_API_KEY": "k",
                "ALPACA_SECRET_KEY": "s",
            },
            "RL_TRADING_TICKERS is not set: expected the tickers Alpaca is asked for, e.g. AAPL,MSFT "
            "(RL_TRADING_ENV=alpaca)",
        ),
        (
            {"RL_TRADING_HOME": str(a_file)},
            f"RL_TRADING_HOME='{a_file}': expected a directory (it is a file)",
        ),
        (
            {"RL_TRADING_STATE_DB_URL": "postgresql+nosuchdriver://trader:hunter2@db/state"},
            "RL_TRADING_STATE_DB_URL='postgresql+nosuchdriver://***@db/state': expected a SQLAlchemy URL such as "
            "postgresql+psycopg2://user@host:5432/db (no installed driver for 'postgresql+nosuchdriver')",
        ),
        (
            {"MLFLOW_TRACKING_URI": "gopher://mlflow"},
            "MLFLOW_TRACKING_URI='gopher://mlflow': expected a folder, file:///path, sqlite:///path.db, "
            "postgresql://… or an http(s):// tracking server",
        ),
        (
            {"RAY_ADDRESS": "ray://head"},
            "RAY_ADDRESS='ray://head': expected auto, local, HOST:PORT or ray://HOST:PORT",
        ),
    ]


def test_each_bad_environment_variable_is_one_line_and_exit_2_before_any_store_is_touched(
    fresh_home, capsys, monkeypatch, tmp_path
):
    for variables, line in _env_cases(tmp_path):
        with monkeypatch.context() as patch:
            for name, value in variables.items():
                patch.setenv(name, value)
            lines = refused([], capsys)
        assert lines == [f"make run: {line}"], variables
        assert "sekrit" not in "".join(lines) and "hunter2" not in "".join(lines)
        assert not fresh_home.exists()


def test_good_arguments_and_environments_pass_the_checks(fresh_home, slice_csv, tmp_path):
    allow_list = tmp_path / "allow.csv"
    allow_list.write_text("tic,date\nAAPL,2000-09-29\n")
    argv = ["--timesteps", "64", "--seed", "0", "--train-end", "2005-12-30", "--validation-end", "2008-12-31"]
    args = run_pipeline.parse_args([*argv, "--split-allow-list", str(allow_list)])
    assert run_pipeline.argument_problems(args, environ={}) == []
    assert run_pipeline.run_config_for(args)["ops"]["validated_daily_bars"] == {
        "config": {"allowed_jumps_path": str(allow_list)}
    }
    real_file = {
        "RL_TRADING_ENV": "file",
        "RL_TRADING_DATA_PATH": str(slice_csv),
        "RL_TRADING_TICKERS": "KO,MSFT",
        "RL_TRADING_START_DATE": "2016-01-01",
        "RAY_ADDRESS": "127.0.0.1:6379",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    split = run_pipeline.parse_args(["--train-end", "2017-12-29", "--validation-end", "2018-12-31"])
    assert run_pipeline.argument_problems(split, environ=real_file) == []
    # The window starts at RL_TRADING_START_DATE: a training period before it is refused.
    early = run_pipeline.parse_args(["--train-end", "2015-06-30"])
    assert run_pipeline.argument_problems(early, environ=real_file) == [
        "--train-end 2015-06-30: expected a date after RL_TRADING_START_DATE 2016-01-01"
    ]
    assert not fresh_home.exists()


def test_a_bad_environment_fails_the_code_location_in_one_line_not_a_key_error(fresh_home, monkeypatch):
    from pipelines.resources_by_env import EnvironmentProblems, market_data_for, resources_for

    monkeypatch.setenv("RL_TRADING_ENV", "file")
    with pytest.raises(
        EnvironmentProblems, match=r"^RL_TRADING_DATA_PATH is not set: .*\(RL_TRADING_ENV=file\)$"
    ):
        resources_for()
    assert not fresh_home.exists()  # refused before the state home was prepared
    with pytest.raises(
        EnvironmentProblems, match=r"^RL_TRADING_ENV='nope': expected one of local, file, alpaca$"
    ):
        market_data_for("nope")


def test_the_summary_names_the_innermost_cause_of_a_failed_step():
    from resources.market_data import RawBars
    from tests.test_validation import synthetic_split_bars
    from trading_assets.validation import validated_daily_bars

    @dg.asset
    def agent_zoo() -> None:
        raise ValueError("total_timesteps must be positive, got -5")

    @dg.asset
    def features() -> None:
        try:
            {}["close"]
        except KeyError as error:
            raise RuntimeError("could not build the features") from error

    @dg.asset
    def raw_daily_bars():
        return RawBars(synthetic_split_bars(), "synthetic bars", "synthetic_split.csv")

    def failure_lines(run_config: dict | None = None, more: tuple = ()) -> list[str]:
        result = dg.materialize(
            [*more, raw_daily_bars, validated_daily_bars], raise_on_error=False, run_config=run_config
        )
        text, ok = run_pipeline.summarize(result, HOME, "sqlite:///synthetic.db")
        assert not ok and "Error occurred while executing op" not in text
        return [line for line in text.splitlines() if line.startswith("  step ")]

    assert failure_lines(more=(agent_zoo, features)) == [
        "  step 'agent_zoo' failed: ValueError: total_timesteps must be positive, got -5",
        "  step 'features' failed: KeyError: 'close'",
        "  step 'validated_daily_bars' failed: DataValidationError: synthetic_split.csv: unadjusted_splits: close "
        "jumps by a split ratio and stays there (an unadjusted split; adjust the data, or allow-list a real event "
        "by ticker and date): 1 row(s) in column close: row 40 (2021-03-01 SYNTH) close x0.501 ~ 2:1 split",
    ]
    # A launchpad config the domain refuses fails its step at the start, named the same way.
    bad_config = {"ops": {"validated_daily_bars": {"config": {"split_confirm_bars": 0}}}}
    assert failure_lines(bad_config) == [
        "  step 'validated_daily_bars' failed: ValidationError: ValidationConfig.split_confirm_bars=0: expected a "
        "whole number >= 1"
    ]


# ------------------------------------------------------------------- the console: one line per step, no plumbing


def test_the_console_prints_one_line_per_step_its_messages_and_no_plumbing_or_traceback(capsys):
    from pipelines.console import CONSOLE_LOGGERS, console_job

    @dg.asset
    def bars(context) -> int:
        context.log.info("loaded 3 bars\nsecond line of a table")
        context.log.debug("plumbing nobody reads")
        for epoch in range(1, 9):
            context.log.info(f"epoch {epoch}/8: loss {1 / epoch:.2f}")
        for task in range(1, 4):
            context.log.info(f"fan-out: {task}/3 tasks done")
        return 3

    @dg.asset
    def features(bars: int) -> int:
        raise ValueError("no close column")

    @dg.asset
    def model(features: int) -> int:
        return features

    job = dg.Definitions(
        assets=[bars, features, model], jobs=[dg.define_asset_job("toy", selection="*")]
    ).resolve_job_def("toy")
    console = console_job(job, run_pipeline.step_failure_line)
    result = console.execute_in_process(run_config=CONSOLE_LOGGERS, raise_on_error=False)
    assert not result.success
    lines = capsys.readouterr().out.splitlines()
    assert [line[:14] for line in lines if line.startswith("[")] == [
        "[1/3 00:00] ba",
        "[2/3 00:00] fe",
        "[3/3 00:00] mo",
    ]
    assert lines[0] == "             bars: loaded 3 bars …"  # a message's first line, under its step's number
    # A progress count shows as it starts, half way and at its end; a short one only at its end.
    assert [line.split(":")[1].strip() for line in lines[1:4]] == [f"epoch {n}/8" for n in (1, 4, 8)]
    assert lines[4] == "             bars: fan-out: 3/3 tasks done"
    assert lines[5].startswith("[1/3 00:00] bars done in ") and lines[5].endswith(" s")
    assert lines[6] == "[2/3 00:00] features FAILED: ValueError: no close column"
    assert lines[7] == "[3/3 00:00] model not run: it needs features, which failed"
    assert len(lines) == 8  # no DEBUG event, no traceback, no run start or end


def test_a_gate_rejection_is_a_verdict_line_not_a_failure():
    rejected = step_failure("backtest", "DagsterAssetCheckFailedError", "blocking check min_sharpe failed")
    broken = step_failure("backtest", "ValueError", "ValueError: empty test period")
    assert run_pipeline.step_failure_line(rejected) == (
        "rejected by the promotion gate (a verdict, not an error: the summary says why)"
    )
    assert run_pipeline.step_failure_line(broken) == "FAILED: ValueError: empty test period"


def test_debug_is_a_flag_and_changes_no_asset_config():
    assert run_pipeline.parse_args([run_pipeline.DEBUG_FLAG]).debug
    assert not run_pipeline.parse_args([]).debug
    assert run_pipeline.run_config_for(run_pipeline.parse_args([run_pipeline.DEBUG_FLAG])) == {"ops": {}}
    assert run_pipeline._wants_debug(["--seed", "3", "--debug"]) and not run_pipeline._wants_debug(
        ["--seed", "3"]
    )


def test_each_finished_fan_out_task_logs_one_progress_line(caplog):
    from trading_core.runtime.distributed import fan_out

    with caplog.at_level("INFO", logger="trading_core.runtime.distributed"):
        assert fan_out(abs, [-1, -2, 3], use_ray=False, label="zoo") == [1, 2, 3]
    assert [message.split(" after ")[0] for message in caplog.messages] == [
        "zoo: 1/3 tasks done",
        "zoo: 2/3 tasks done",
        "zoo: 3/3 tasks done",
    ]


def test_make_run_adds_the_weeks_of_its_bars_as_retraining_partitions():
    from pipelines.jobs import RETRAINING_WEEKS

    raw = SimpleNamespace(frame=pd.DataFrame({"date": pd.bdate_range("2013-02-18", "2013-03-01")}))
    with dg.instance_for_test() as instance:
        line = run_pipeline.record_retraining_weeks(instance, raw)
        assert instance.get_dynamic_partitions(RETRAINING_WEEKS.name) == ["2013-02-22", "2013-03-01"]
        assert run_pipeline.record_retraining_weeks(instance, raw) == line  # a second run adds nothing
        assert run_pipeline.record_retraining_weeks(instance, None) is None
    assert line == (
        "weekly_retraining: 2 week partitions (retraining_weeks), 2013-02-22 .. 2013-03-01, each cut at its week's "
        "last trading day"
    )
