"""Single assets unit-tested the Dagster way: each decorated asset called directly with small frames.

Beside the whole-graph tests (tests/test_pipeline.py), each test here invokes one asset with
``dg.build_asset_context()`` (where it takes a context), its ``Config`` and in-memory inputs: synthetic frames
(named so) built here, slices of the real shared data through tests/conftest.py, and fake resources that
stand in for the market-data source and the model registry.
"""

from __future__ import annotations

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from resources.market_data import MarketDataResource, RawBars
from resources.mlflow_registry import (
    CHAMPION_ALIAS,
    PREVIOUS_ALIAS,
    REGISTERED_BY_TAG,
    MlflowRegistryResource,
    RegisteredVersion,
)
from resources.trading_state import TradingStateResource
from trading_assets.evaluation import (
    BacktestReport,
    CandidateGateSettings,
    SeedSweepReport,
    StressReport,
    candidate_verdicts,
    champion_model,
)
from trading_assets.features import FeatureSettings, SplitSettings, dataset_splits, features
from trading_assets.ingestion import IngestionSettings, raw_daily_bars
from trading_assets.paper_trading import (
    ABTestSettings,
    ReconciliationSettings,
    ab_test,
    fill_reconciliation,
    paper_trading_sessions,
)
from trading_assets.selection import LeaderboardReport, RegisteredCandidate
from trading_assets.training import ENSEMBLE_MODEL_NAME, AgentZooReport, EnsembleReport, TrainedAgent
from trading_assets.validation import ValidationSettings, validated_daily_bars
from trading_core.agents.training import PPOConfig
from trading_core.data.validation import RULES
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtester import buy_and_hold_record
from trading_core.evaluation.leaderboard import BENCHMARK, CandidateRun, Leaderboard, PeriodFigures
from trading_core.evaluation.metrics import compute_metrics, deflated_sharpe_ratio, per_period_sharpe_variance
from trading_core.evaluation.promotion import GateResult
from trading_core.evaluation.seed_sweep import SeedOutcome
from trading_core.live.state import CHALLENGER, CHAMPION, TradingStateStore

SYNTHETIC_TICKERS = ("AAA", "BBB", "CCC")
# 30 NYSE sessions without a holiday among them (Presidents' Day is 2021-02-15, Good Friday 2021-04-02).
SYNTHETIC_DATES = pd.bdate_range("2021-02-16", periods=30)
SYNTHETIC_LOCATION = "synthetic://3-tickers-x-30-days"


def synthetic_bars() -> pd.DataFrame:
    """Synthetic daily bars, 3 tickers x 30 sessions, ordered by ticker then date, dates as text (as loaded)."""
    rows = []
    for number, tic in enumerate(SYNTHETIC_TICKERS):
        close = 50.0 * (number + 1) * np.cumprod(1 + 0.01 * np.sin(np.arange(len(SYNTHETIC_DATES)) + number))
        for date, price in zip(SYNTHETIC_DATES, close, strict=True):
            rows.append(
                {
                    "date": date.date().isoformat(),
                    "tic": tic,
                    "open": price * 0.998,
                    "high": price * 1.01,
                    "low": price * 0.99,
                    "close": price,
                    "volume": 1_000_000.0 + 1_000 * number,
                }
            )
    return pd.DataFrame(rows)


class SyntheticMarketData(MarketDataResource):
    """The market-data resource with its source replaced by the synthetic bars (no VIX)."""

    def load_daily_bars(self) -> RawBars:
        return RawBars(synthetic_bars(), "synthetic bars", SYNTHETIC_LOCATION)

    def load_vix(self) -> pd.Series | None:
        return None


def synthetic_equity(daily_return: float, n: int = 120, start: str = "2021-01-04", wiggle: float = 0.004):
    """A synthetic equity curve: constant drift plus a deterministic wiggle, one mark per business day."""
    returns = daily_return + wiggle * np.sin(np.arange(n) * 1.7)
    return pd.Series(100_000.0 * np.cumprod(1 + returns), index=pd.bdate_range(start, periods=n))


def gate(name: str, passed: bool) -> GateResult:
    return GateResult(name, passed, 1.0, 1.0, f"{name} {'met' if passed else 'missed'}")


class FakeRegistry:
    """The registry calls the evaluation assets make, kept in memory."""

    model_name = "rl_trading_agent"

    def __init__(self, aliases: dict[str, str] | None = None, trials: int = 1) -> None:
        self.aliases = dict(aliases or {})
        self.trials = trials
        self.tags: dict[tuple[str, str | None], dict[str, str]] = {}

    # The real gate-record and promotion logic, over the tags and aliases kept here.
    record_gate = MlflowRegistryResource.record_gate
    promote = MlflowRegistryResource.promote

    def version_tags(self, version: str, model_name: str | None = None) -> dict[str, str]:
        return dict(self.tags.get((version, model_name), {}))

    def version_for_alias(self, alias: str, model_name: str | None = None) -> str | None:
        return self.aliases.get(alias)

    def set_alias(self, version: str, alias: str, model_name: str | None = None) -> None:
        self.aliases[alias] = version

    def trial_count(self) -> int:
        return self.trials

    def set_version_tags(self, version: str, tags: dict[str, str], model_name: str | None = None) -> None:
        self.tags.setdefault((version, model_name), {}).update(tags)


# ------------------------------------------------------------------------------------------------ ingestion


def test_raw_daily_bars_reads_the_resource_and_cuts_at_as_of():
    context = dg.build_asset_context()
    everything = raw_daily_bars(context, config=IngestionSettings(), market_data=SyntheticMarketData())
    assert len(everything.value.frame) == len(SYNTHETIC_TICKERS) * len(SYNTHETIC_DATES)
    assert everything.value.location == SYNTHETIC_LOCATION
    assert everything.metadata["as_of"].value == "all data"

    cutoff = SYNTHETIC_DATES[9].date().isoformat()
    cut = raw_daily_bars(context, config=IngestionSettings(as_of=cutoff), market_data=SyntheticMarketData())
    dates = pd.to_datetime(cut.value.frame["date"])
    assert dates.max() == SYNTHETIC_DATES[9] and len(cut.value.frame) == 10 * len(SYNTHETIC_TICKERS)
    assert cut.value.source == "synthetic bars" and cut.metadata["as_of"].value == cutoff


def test_raw_daily_bars_keeps_unparseable_dates_for_validation_and_refuses_an_early_as_of():
    class Garbled(SyntheticMarketData):
        def load_daily_bars(self) -> RawBars:
            frame = synthetic_bars()
            frame.loc[5, "date"] = "not a date"
            return RawBars(frame, "synthetic bars", SYNTHETIC_LOCATION)

    context = dg.build_asset_context()
    cutoff = SYNTHETIC_DATES[2].date().isoformat()
    kept = raw_daily_bars(context, config=IngestionSettings(as_of=cutoff), market_data=Garbled()).value.frame
    assert "not a date" in set(kept["date"])  # left for the validation checks to name
    assert len(kept) == 3 * len(SYNTHETIC_TICKERS) + 1
    with pytest.raises(dg.Failure, match="no bars on or before as_of=2020-01-01"):
        raw_daily_bars(context, config=IngestionSettings(as_of="2020-01-01"), market_data=Garbled())


# ----------------------------------------------------------------------------------------------- validation


def _validate(frame: pd.DataFrame) -> list:
    raw = RawBars(frame, "synthetic bars", SYNTHETIC_LOCATION)
    return list(
        validated_daily_bars(dg.build_asset_context(), config=ValidationSettings(), raw_daily_bars=raw)
    )


def test_validated_daily_bars_passes_clean_synthetic_bars_typed_and_sorted():
    events = _validate(synthetic_bars())
    outputs = [e for e in events if isinstance(e, dg.Output)]
    checks = {e.check_name: e for e in events if isinstance(e, dg.AssetCheckResult)}
    assert set(checks) == set(RULES) and all(c.passed for c in checks.values())
    validated = outputs[0].value
    assert pd.api.types.is_datetime64_any_dtype(validated["date"])
    assert list(validated[["date", "tic"]].itertuples(index=False)) == sorted(
        validated[["date", "tic"]].itertuples(index=False)
    )
    assert len(validated) == 90


def test_validated_daily_bars_names_file_column_and_row_of_a_bad_bar():
    frame = synthetic_bars()
    bad = frame.index[(frame["tic"] == "BBB")][9]  # position 39: the 10th BBB bar
    frame.loc[bad, "high"] = frame.loc[bad, "close"] * 0.999  # high above the open but below the close
    events = []
    with pytest.raises(dg.Failure) as failure:
        for event in validated_daily_bars(
            dg.build_asset_context(),
            config=ValidationSettings(),
            raw_daily_bars=RawBars(frame, "synthetic bars", SYNTHETIC_LOCATION),
        ):
            events.append(event)
    assert not any(isinstance(e, dg.Output) for e in events)  # nothing stored when a blocking rule fails
    checks = {e.check_name: e for e in events if isinstance(e, dg.AssetCheckResult)}
    high = checks["high_is_max"]
    assert not high.passed and high.severity == dg.AssetCheckSeverity.ERROR
    assert high.description.startswith(f"{SYNTHETIC_LOCATION}: ")
    assert f"row {bad} ({SYNTHETIC_DATES[9].date()} BBB)" in high.description
    assert high.metadata["column"].value == "high/close" and high.metadata["failing_rows"].value == 1
    assert "high_is_max" in failure.value.description and SYNTHETIC_LOCATION in failure.value.description
    assert all(checks[name].passed for name in RULES if name != "high_is_max")


# ------------------------------------------------------------------------------------------------- features


@pytest.fixture(scope="module")
def year_bars(slice_bars) -> pd.DataFrame:
    """Real validated bars (4 tickers) of 2018-2019 from the shared data."""
    return slice_bars[slice_bars["date"] >= "2018-01-01"].reset_index(drop=True)


@pytest.fixture(scope="module")
def year_features(year_bars) -> pd.DataFrame:
    config = FeatureSettings(use_turbulence=False, use_vix=False)
    return features(config=config, validated_daily_bars=year_bars, market_data=SyntheticMarketData()).value


def test_features_are_causal_and_drop_warmup_dates(year_bars, year_features):
    config = FeatureSettings(use_turbulence=False, use_vix=False)
    out = features(config=config, validated_daily_bars=year_bars, market_data=SyntheticMarketData())
    frame = out.value
    columns = out.metadata["feature_columns"].value.split(", ")
    assert "macd" in columns and "turbulence" not in columns and "vix" not in columns
    assert not frame[columns].isna().any().any()
    dropped = out.metadata["dropped_warmup_dates"].value
    assert dropped > 0 and frame["date"].nunique() == year_bars["date"].nunique() - dropped
    assert frame["date"].min() > year_bars["date"].min()  # warm-up dropped, never back-filled

    # Past bars only: features of a day are the same whether or not later bars exist.
    day = frame["date"].sort_values().unique()[100]
    cut = features(
        config=config,
        validated_daily_bars=year_bars[year_bars["date"] <= day],
        market_data=SyntheticMarketData(),
    ).value
    pd.testing.assert_frame_equal(
        cut[cut["date"] == day].reset_index(drop=True), frame[frame["date"] == day].reset_index(drop=True)
    )


def test_dataset_splits_by_fraction_and_by_date(year_features):
    dates = np.sort(year_features["date"].unique())
    n = len(dates)
    by_fraction = dataset_splits(
        config=SplitSettings(train_fraction=0.6, validation_fraction=0.2), features=year_features
    ).value
    assert by_fraction.train["date"].nunique() == int(n * 0.6)
    assert by_fraction.validation["date"].nunique() == int(n * 0.8) - int(n * 0.6)
    assert by_fraction.test["date"].nunique() == n - int(n * 0.8)
    split = by_fraction.split
    assert split.train_end < split.validation_start <= split.validation_end < split.test_start
    assert split.train_start == dates[0] and split.test_end == dates[-1]
    assert len(by_fraction.train) + len(by_fraction.validation) + len(by_fraction.test) == len(year_features)

    by_date = dataset_splits(
        config=SplitSettings(train_end="2019-03-31", validation_end="2019-06-30"), features=year_features
    ).value
    assert by_date.train["date"].max() <= pd.Timestamp("2019-03-31") < by_date.validation["date"].min()
    assert by_date.validation["date"].max() <= pd.Timestamp("2019-06-30") < by_date.test["date"].min()
    assert by_date.tickers == sorted(year_features["tic"].unique())


# --------------------------------------------------------------------------------------------- paper trading


@pytest.fixture()
def trading_state(tmp_path) -> TradingStateResource:
    """A small trading-state database: one session with a shadow challenger, two reconciled orders, an alert."""
    resource = TradingStateResource(url=f"sqlite:///{tmp_path / 'state.db'}")
    store: TradingStateStore = resource.store()
    store.create_schema()
    store.start_session("s1", model_name="m", model_version="1", challenger_version="2", broker="simulated")
    marks = pd.date_range("2021-03-01 21:00", periods=25, freq="B", tz="UTC")  # one close per session
    for n, bar_time in enumerate(marks):
        for role, step in ((CHAMPION, 0.002), (CHALLENGER, 0.001 * (-1) ** n)):
            store.record_equity(
                session_id="s1", role=role, bar_time=bar_time, equity=1e5 * (1 + step * n), cash=0
            )
    for order, side, broker_price, filled_at in (
        ("o1", "buy", 100.5, marks[1]),
        ("o2", "sell", 99.0, marks[2]),
    ):
        store.record_order_intent(
            client_order_id=order, session_id="s1", symbol="AAA", side=side, qty=10, decision_time=filled_at
        )
        for source, price in (("broker", broker_price), ("simulated", 100.0)):
            store.record_fill(
                client_order_id=order,
                session_id="s1",
                symbol="AAA",
                side=side,
                qty=10,
                price=price,
                filled_at=filled_at,
                source=source,
            )
    store.record_alert("s1", "drawdown_breach", "warning", "synthetic alert")
    store.close()
    return resource


def test_paper_trading_review_assets_on_a_small_state_db(trading_state):
    sessions = paper_trading_sessions(trading_state=trading_state).value
    row = sessions.iloc[0]
    assert (row["session_id"], row["bars"], row["orders"], row["broker_fills"], row["alerts"]) == (
        "s1",
        25,
        2,
        2,
        1,
    )
    assert row["return"] == pytest.approx(0.002 * 24)

    events = list(
        fill_reconciliation(
            config=ReconciliationSettings(), paper_trading_sessions=sessions, trading_state=trading_state
        )
    )
    table = next(e for e in events if isinstance(e, dg.Output)).value
    # Positive slippage is a cost: the buy filled 50 bps above, the sell 100 bps below the simulator's price.
    assert table.set_index("client_order_id")["slippage_bps"].to_dict() == pytest.approx(
        {"o1": 50.0, "o2": 100.0}
    )
    check = next(e for e in events if isinstance(e, dg.AssetCheckResult))
    assert check.check_name == "slippage_drift" and "2 fills, mean slippage +75.00 bps" in check.description

    enough = ab_test(
        config=ABTestSettings(min_sessions=20), paper_trading_sessions=sessions, trading_state=trading_state
    )
    assert enough.value["sessions"] == 25
    assert enough.value["champion_return"] == pytest.approx(0.048)
    assert enough.value["verdict"] in {"challenger better", "challenger worse", "no significant difference"}
    too_few = ab_test(
        config=ABTestSettings(min_sessions=30), paper_trading_sessions=sessions, trading_state=trading_state
    )
    assert too_few.value["verdict"] == "insufficient evidence: 25 of 30 sessions"


def test_paper_trading_review_assets_on_an_empty_state_db(tmp_path):
    resource = TradingStateResource(url=f"sqlite:///{tmp_path / 'empty.db'}")
    resource.store().create_schema()
    sessions = paper_trading_sessions(trading_state=resource)
    assert sessions.value.empty and sessions.metadata["table"].value == "no sessions yet"
    events = list(
        fill_reconciliation(
            config=ReconciliationSettings(), paper_trading_sessions=sessions.value, trading_state=resource
        )
    )
    assert next(e for e in events if isinstance(e, dg.Output)).value.empty
    assert next(e for e in events if isinstance(e, dg.AssetCheckResult)).passed
    verdict = ab_test(config=ABTestSettings(), paper_trading_sessions=sessions.value, trading_state=resource)
    assert verdict.value == {"verdict": "no session with a challenger yet"}


# -------------------------------------------------------------------------------------- promotion and verdicts


# The run id of a directly invoked asset's context (``dg.build_asset_context()``).
DIRECT_RUN = "EPHEMERAL"


def evaluation_reports(
    version: str, passed: bool, stress_version: str | None = None, run_id: str = DIRECT_RUN
) -> dict:
    """Hand-made inputs of ``champion_model``: backtest, stress and seed-sweep reports of ``version`` whose
    ``min_sharpe`` gate ``passed`` (every other gate passes), and the registered version itself, all of run
    ``run_id``."""
    equity = synthetic_equity(0.001)
    metrics = compute_metrics(equity)
    backtest = BacktestReport(
        model_name="rl_trading_agent",
        version=version,
        dagster_run_id=run_id,
        equity=equity,
        benchmark_equity=equity,
        metrics=metrics,
        benchmark_metrics=metrics,
        total_cost=0.0,
        trades=0,
        gate=(gate("min_sharpe", passed), gate("max_drawdown", True)),
    )
    stress = StressReport(
        version=stress_version or version,
        dagster_run_id=run_id,
        results=(),
        gate=(gate("stress_drawdown_limit", True),),
    )
    sweep = SeedSweepReport(
        version=version,
        dagster_run_id=run_id,
        table=pd.DataFrame(),
        distribution=pd.DataFrame(),
        n_trials=1,
        deflated_sharpe=1.0,
        gate=(gate("seed_p25_sharpe", True),),
    )
    registered = RegisteredCandidate(
        RegisteredVersion("rl_trading_agent", version, f"run-{version}", "source"),
        candidate="ppo_recipe",
        algorithm="ppo",
        seed=42,
        agent_config=PPOConfig().as_agent_config(),
        dagster_run_id=run_id,
        leaderboard_run_id=run_id,
    )
    return {"backtest": backtest, "stress_tests": stress, "seed_sweep": sweep, "registered_model": registered}


def record_evidence(registry: FakeRegistry, reports: dict) -> dict:
    """What registration and the gate steps leave in the registry for the reports' version; the reports."""
    registered = reports["registered_model"]
    registry.set_version_tags(registered.version, {REGISTERED_BY_TAG: registered.dagster_run_id})
    for step in ("backtest", "stress_tests", "seed_sweep"):
        registry.record_gate(reports[step].gate_record())
    return reports


def test_champion_model_moves_the_alias_only_when_every_gate_passed():
    registry = FakeRegistry({CHAMPION_ALIAS: "1"})
    reports = record_evidence(registry, evaluation_reports("2", passed=True))
    out = champion_model(dg.build_asset_context(), model_registry=registry, **reports)
    assert out.value == {
        "model_name": "rl_trading_agent",
        "version": "2",
        "promoted": True,
        "verdict": "promoted",
        "reasons": [],
        "champion": "2",
        "previous": "1",
        "dagster_run_id": DIRECT_RUN,
    }
    assert registry.aliases == {CHAMPION_ALIAS: "2", PREVIOUS_ALIAS: "1"}
    assert out.metadata["verdict"].value == "promoted" and out.metadata["promoted"].value is True


def test_a_rejected_candidate_completes_as_not_promoted_with_its_reasons():
    registry = FakeRegistry({CHAMPION_ALIAS: "2", PREVIOUS_ALIAS: "1"})
    reports = record_evidence(registry, evaluation_reports("3", passed=False))
    out = champion_model(dg.build_asset_context(), model_registry=registry, **reports)
    decision = out.value
    assert (decision["promoted"], decision["verdict"]) == (False, "not promoted")
    # Each failed criterion with the figure and threshold its step measured.
    assert decision["reasons"] == ["backtest min_sharpe: min_sharpe missed"]
    assert (decision["champion"], decision["previous"]) == ("2", None)
    assert registry.aliases == {CHAMPION_ALIAS: "2", PREVIOUS_ALIAS: "1"}  # a refused promotion moves nothing
    metadata = out.metadata
    assert metadata["verdict"].value == "not promoted" and metadata["promoted"].value is False
    assert metadata["reasons"].value == "- backtest min_sharpe: min_sharpe missed"
    assert metadata["champion"].value == "v2"
    assert "validation picks it" in metadata["other_candidates"].value
    assert metadata["mlflow_model_version"].value.endswith("/#/models/rl_trading_agent/versions/3")
    assert metadata["mlflow_champion_version"].value.endswith("/#/models/rl_trading_agent/versions/2")

    reports = record_evidence(registry, evaluation_reports("3", passed=True, stress_version="2"))
    out = champion_model(dg.build_asset_context(), model_registry=registry, **reports)
    assert out.value["reasons"] == ["the stress_tests gate record is of version 2, not 3"]
    assert registry.aliases == {CHAMPION_ALIAS: "2", PREVIOUS_ALIAS: "1"}


def test_champion_model_first_promotion_has_no_previous():
    registry = FakeRegistry()
    reports = record_evidence(registry, evaluation_reports("1", passed=True))
    out = champion_model(dg.build_asset_context(), model_registry=registry, **reports)
    assert out.value["previous"] is None and registry.aliases == {CHAMPION_ALIAS: "1"}


def _refusal(registry: FakeRegistry, reports: dict) -> list[str]:
    """The reasons ``champion_model`` gives for not promoting, after checking that it moved nothing."""
    aliases = dict(registry.aliases)
    decision = champion_model(dg.build_asset_context(), model_registry=registry, **reports).value
    assert decision["promoted"] is False and registry.aliases == aliases
    return decision["reasons"]


def test_champion_model_refuses_evidence_of_another_run():
    registry = FakeRegistry({CHAMPION_ALIAS: "1"})
    # Outputs of another run (read from the shared store while that run overwrote them): nothing moves.
    foreign = record_evidence(registry, evaluation_reports("2", passed=True, run_id="other-run"))
    assert _refusal(registry, foreign)[:3] == [
        "version 2 was registered by run other-run, not this run EPHEMERAL",
        "the backtest gate record of version 2 is from run other-run, not this run EPHEMERAL",
        "the stress_tests gate record of version 2 is from run other-run, not this run EPHEMERAL",
    ]

    # This run's outputs agree, but the registry's backtest record of the version comes from another run.
    registry = FakeRegistry({CHAMPION_ALIAS: "1"})
    reports = record_evidence(registry, evaluation_reports("2", passed=True))
    registry.record_gate(evaluation_reports("2", passed=True, run_id="other-run")["backtest"].gate_record())
    assert _refusal(registry, reports) == [
        "the registry's records refuse it: rl_trading_agent v2: the backtest gate record of version 2 "
        "is from run other-run, not this run EPHEMERAL"
    ]

    # Outputs without any record in the registry (their gate steps never reached it): refused.
    registry = FakeRegistry({CHAMPION_ALIAS: "1"})
    reasons = _refusal(registry, evaluation_reports("2", passed=True))
    assert reasons[0].startswith("the registry's records refuse it:")
    assert "no backtest gate record for version 2; no stress_tests gate record" in reasons[0]
    assert registry.aliases == {CHAMPION_ALIAS: "1"}


def _outcome(algorithm: str, seed: int, test_sharpe: float, drawdown: float, drift: float) -> SeedOutcome:
    returns = synthetic_equity(drift, n=250).pct_change().dropna()
    total_return = float((1 + returns).prod() - 1)
    return SeedOutcome(
        algorithm=algorithm,
        seed=seed,
        validation_sharpe=float(seed),  # the higher seed is validation's pick
        test_sharpe=test_sharpe,
        test_return=total_return,
        test_max_drawdown=drawdown,
        test_returns=returns,
        validation=PeriodFigures(float(seed), 0.0, 0.0, 0.0, 0.0, 0, pd.Series(dtype=float)),
        test=PeriodFigures(test_sharpe, total_return, drawdown, 0.0, 0.0, 0, returns),
    )


def test_candidate_verdicts_table_on_hand_made_reports(year_features):
    splits = dataset_splits(config=SplitSettings(), features=year_features).value
    zoo = AgentZooReport(
        table=pd.DataFrame(),
        outcomes=(
            _outcome("steady", 1, 6.4, 0.05, 0.002),
            _outcome("steady", 2, 6.6, 0.04, 0.002),
            _outcome("losing", 1, -0.4, 0.30, -0.001),
            _outcome("losing", 2, -0.6, 0.35, -0.001),
        ),
    )
    ensemble_version = RegisteredVersion(ENSEMBLE_MODEL_NAME, "7", "run-ensemble", "source")
    ensemble = EnsembleReport(
        weights={"steady": 0.9, "losing": 0.1},
        validation_sharpes={"steady": 2.0, "losing": -0.5},
        weighted_equity=synthetic_equity(0.002, n=250),
        rolling_equity=synthetic_equity(-0.001, n=250),
        rolling_choices=pd.DataFrame(),
        version=ensemble_version,
    )
    equity = synthetic_equity(0.001)
    agent = TrainedAgent(
        run_id="run-1",
        model_uri="models:/rl_trading_agent/1",
        algorithm="PPO",
        seed=0,
        env_spec=EnvSpec(),
        feature_columns=(),
        ppo_config=PPOConfig(),
        data_sha256="synthetic",
        validation_metrics=compute_metrics(equity),
    )
    test_market = agent.observation_market(splits, "test")
    board = Leaderboard(
        (
            *(outcome.candidate_run() for outcome in zoo.split_outcomes()),
            *(
                CandidateRun(name, "ensemble", None, PeriodFigures.missing(), PeriodFigures.of_equity(curve))
                for name, curve in (
                    ("weighted_ensemble", ensemble.weighted_equity),
                    ("rolling_selection", ensemble.rolling_equity),
                )
            ),
            CandidateRun(
                BENCHMARK,
                "benchmark",
                None,
                PeriodFigures.missing(),
                PeriodFigures.of_record(buy_and_hold_record(test_market, agent.env_spec.simulation)),
            ),
        ),
        n_trials=5,
    )
    registry = FakeRegistry(trials=5)
    out = candidate_verdicts(
        dg.build_asset_context(),
        config=CandidateGateSettings(),
        candidate_leaderboard=LeaderboardReport(board, "steady", None, "run-board"),
        agent_zoo=zoo,
        agent_ensemble=ensemble,
        model_registry=registry,
    )
    result = out.value
    table = result.table().set_index("candidate")
    assert list(table.index) == ["steady", "losing", "weighted_ensemble", "rolling_selection"]
    assert result.n_trials == 5
    steady, losing = table.loc["steady"], table.loc["losing"]
    assert (steady["runs"], steady["sharpe"], steady["worst_drawdown"]) == (2, 6.6, 0.05)  # seed 2 represents
    assert steady["p25_sharpe"] == pytest.approx(6.45) and steady["median_sharpe"] == pytest.approx(6.5)
    # Deflated over the registry's 5 trials and the zoo's runs, not the board's 7 runs and every kind.
    zoo_variance = per_period_sharpe_variance([6.4, 6.6, -0.4, -0.6])
    expected_dsr = deflated_sharpe_ratio(zoo.outcomes[1].test_returns, 5, zoo_variance)
    assert steady["deflated_sharpe"] == pytest.approx(expected_dsr, rel=1e-12)
    assert steady["deflated_sharpe"] != pytest.approx(board.deflated_sharpe("steady"), rel=1e-12)
    # Buy and hold of the real test period (late 2019) has a high Sharpe: between the two candidates.
    assert losing["median_sharpe"] < result.benchmark_sharpe < steady["median_sharpe"]
    assert steady["verdict"] == "pass"
    assert losing["verdict"].startswith("fail: ")
    assert {"min_sharpe", "max_drawdown", "beats_buy_and_hold"} <= set(losing["verdict"][6:].split(", "))
    assert table.loc["weighted_ensemble", "runs"] == 1
    assert registry.tags[("7", ENSEMBLE_MODEL_NAME)] == {
        "promotion_gate": table.loc["weighted_ensemble", "verdict"]
    }
    assert out.metadata["trials"].value == 5
    assert "steady" in out.metadata["passing"].value and "losing" not in out.metadata["passing"].value
    # Why each candidate was or was not the one gated for promotion: validation picked "steady".
    assert steady["promotion"].startswith("registered as validation's pick")
    assert losing["promotion"].startswith("not registered: validation picked steady")
    assert table.loc["weighted_ensemble", "promotion"].startswith("not registrable: fit on validation")
    assert "validation picks it" in out.metadata["promotion_rule"].value
