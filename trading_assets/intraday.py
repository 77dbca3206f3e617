"""Minute bars end to end: raw and validated bars per exchange session, features, and a PPO agent trained,
backtested after costs against buy-and-hold, and gated on them (group ``intraday``).

``raw_minute_bars`` and ``validated_minute_bars`` are partitioned by exchange session (``intraday_sessions``, a
dynamic partition set the ``intraday_sessions_sensor`` extends with the sessions the intraday source holds; job
``minute_bars_ingestion`` materializes them, one run per session). Each session's intraday rules are asset checks;
a blocking failure stores nothing for that session. The unpartitioned assets downstream (job
``minute_bars_pipeline``) read every session's validated bars and refuse to run while a known session has none.
The minute agent is not the daily champion: it is judged here and never registered.

Without an intraday source (no ``intraday_path`` and a source other than ``alpaca``) there are no sessions:
``minute_features`` says why in its log and skips, and everything after it is skipped with it.
"""

from dataclasses import dataclass

import dagster as dg
import pandas as pd

from resources.market_data import MarketDataResource, RawBars
from trading_assets.config_defaults import DomainCheckedConfig, default_of
from trading_assets.metadata import frame_metadata, markdown_table, number, png_metadata
from trading_core.agents.zoo import TrainedPolicy
from trading_core.data.intraday import (
    INTRADAY_RULES,
    IntradayValidationConfig,
    SessionSplitConfig,
    infer_bar_minutes,
    session_split,
    to_validated_intraday_bars,
    validate_intraday_bars,
)
from trading_core.data.schema import BASE_COLUMNS, feature_columns_of
from trading_core.data.splits import DatasetSplits, apply_split
from trading_core.data.validation import DataValidationError, blocking_failures
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtester import BacktestResult
from trading_core.evaluation.minute_bars import (
    MINUTE_CANDIDATE,
    MinuteRecipe,
    intraday_backtest,
    intraday_periods_per_year,
    leaderboard_rows,
)
from trading_core.evaluation.plots import equity_curve_png
from trading_core.evaluation.promotion import GateResult, PromotionThresholds, evaluate_gate
from trading_core.evaluation.seed_sweep import policy_from_bytes, policy_to_bytes
from trading_core.features.intraday_features import IntradayFeatureConfig, build_intraday_features
from trading_core.market.arrays import period_market
from trading_core.runtime.distributed import single_torch_thread

GROUP = "intraday"
INTRADAY_SESSIONS = dg.DynamicPartitionsDefinition(name="intraday_sessions")


def intraday_source_missing(market_data: MarketDataResource) -> str | None:
    """Why the resource has no intraday bars, or ``None`` when it has a source of them."""
    if market_data.source == "alpaca" or market_data.intraday_path:
        return None
    return (
        f"no intraday source: market data source {market_data.source!r} without intraday_path "
        "(set RL_TRADING_INTRADAY_PATH to an intraday bars file, or use the alpaca source)"
    )


class MinuteIngestionSettings(dg.Config):
    """The bar length loaded; unset means the market-data resource's ``intraday_timeframe``."""

    timeframe: str | None = None


@dg.asset(group_name=GROUP, partitions_def=INTRADAY_SESSIONS, compute_kind="pandas")
def raw_minute_bars(
    context: dg.AssetExecutionContext, config: MinuteIngestionSettings, market_data: MarketDataResource
) -> dg.Output[RawBars]:
    """One exchange session's intraday bars (UTC bar end) as the source delivered them."""
    day = context.partition_key
    try:
        raw = market_data.load_intraday_bars(day, day, config.timeframe)
    except ValueError as error:
        raise dg.Failure(description=f"raw_minute_bars {day}: {error}") from error
    if raw.frame.empty:
        raise dg.Failure(description=f"{raw.location}: no intraday bars for session {day}")
    metadata = frame_metadata(raw.frame)
    metadata.update(session=day, source=raw.source, location=raw.location)
    return dg.Output(raw, metadata=metadata)


class MinuteValidationSettings(DomainCheckedConfig):
    """Thresholds of the intraday rules (defaults: :class:`IntradayValidationConfig`)."""

    min_session_completeness: float = default_of(IntradayValidationConfig, "min_session_completeness")
    halt_bars: int = default_of(IntradayValidationConfig, "halt_bars")
    outlier_abs_return: float = default_of(IntradayValidationConfig, "outlier_abs_return")
    bar_minutes: int | None = default_of(IntradayValidationConfig, "bar_minutes")
    calendar: str = default_of(IntradayValidationConfig, "calendar")

    def to_domain(self) -> IntradayValidationConfig:
        return IntradayValidationConfig(**self.model_dump())


MINUTE_VALIDATION_CHECKS = [
    dg.AssetCheckSpec(
        name=name, asset="validated_minute_bars", description=text, blocking=severity == "ERROR"
    )
    for name, (severity, text) in INTRADAY_RULES.items()
]


def _check_metadata(location: str, outcome) -> dict[str, dg.MetadataValue]:
    metadata: dict[str, dg.MetadataValue] = {
        "source": dg.MetadataValue.text(location),
        "failing_rows": dg.MetadataValue.int(outcome.failing_count),
    }
    if outcome.column:
        metadata["column"] = dg.MetadataValue.text(outcome.column)
    if outcome.examples:
        metadata["examples"] = dg.MetadataValue.text("\n".join(outcome.examples))
    for key, value in outcome.details.items():
        metadata[key] = dg.MetadataValue.json(value) if isinstance(value, dict) else number(float(value))
    return metadata


@dg.asset(
    group_name=GROUP,
    partitions_def=INTRADAY_SESSIONS,
    compute_kind="great_expectations",
    check_specs=MINUTE_VALIDATION_CHECKS,
)
def validated_minute_bars(
    context: dg.AssetExecutionContext, config: MinuteValidationSettings, raw_minute_bars: RawBars
):
    """One session's bars that passed every blocking intraday rule, typed and sorted by bar end and ticker."""
    outcomes = validate_intraday_bars(raw_minute_bars.frame, config.to_domain())
    failures = blocking_failures(outcomes)
    location = f"{raw_minute_bars.location} session {context.partition_key}"
    if not failures:
        validated = to_validated_intraday_bars(raw_minute_bars.frame)
        metadata = frame_metadata(validated)
        metadata["rules"] = markdown_table(
            [
                {"rule": o.name, "passed": o.passed, "severity": o.severity, "result": o.description}
                for o in outcomes
            ]
        )
        yield dg.Output(validated, metadata=metadata)
    for outcome in outcomes:
        yield dg.AssetCheckResult(
            check_name=outcome.name,
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity.ERROR
            if outcome.severity == "ERROR"
            else dg.AssetCheckSeverity.WARN,
            description=f"{location}: {outcome.description}",
            metadata=_check_metadata(location, outcome),
        )
    if failures:
        error = DataValidationError(location, failures)
        context.log.error(str(error))
        raise dg.Failure(
            description=str(error), metadata={"failed_rules": ", ".join(f.name for f in failures)}
        ) from error


class MinuteFeatureSettings(dg.Config):
    """Features of the minute bars (defaults: :class:`IntradayFeatureConfig`)."""

    indicators: list[str] = list(default_of(IntradayFeatureConfig, "indicators"))
    use_microstructure: bool = default_of(IntradayFeatureConfig, "use_microstructure")

    def to_domain(self) -> IntradayFeatureConfig:
        return IntradayFeatureConfig(tuple(self.indicators), self.use_microstructure)


def _unvalidated_sessions(context: dg.AssetExecutionContext, sessions: dict[str, pd.DataFrame]) -> list[str]:
    known = context.instance.get_dynamic_partitions(INTRADAY_SESSIONS.name)
    return sorted(set(known) - set(sessions))


@dg.asset(
    group_name=GROUP,
    compute_kind="pandas",
    output_required=False,
    # Sessions without validated bars are named by the asset itself, in one line, instead of a missing file.
    ins={"validated_minute_bars": dg.AssetIn(metadata={"allow_missing_partitions": True})},
)
def minute_features(
    context: dg.AssetExecutionContext,
    config: MinuteFeatureSettings,
    market_data: MarketDataResource,
    validated_minute_bars: dict[str, pd.DataFrame] | None,
):
    """Technical indicators and microstructure features of every session's minute bars, per ticker in bar order,
    from past bars only; ``date`` is the bar end in exchange time."""
    reason = intraday_source_missing(market_data)
    if reason is not None:
        context.log.info(f"minute_features skipped: {reason}")
        return
    sessions = validated_minute_bars or {}
    missing = _unvalidated_sessions(context, sessions)
    if not sessions or missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise dg.Failure(
            description=f"validated_minute_bars: session(s) {shown or 'none known'} have no validated bars "
            "(validation failed or never ran): materialize them with minute_bars_ingestion first"
        )
    bars = pd.concat([sessions[day] for day in sorted(sessions)], ignore_index=True)
    frame = build_intraday_features(bars, config.to_domain())
    metadata = frame_metadata(frame)
    metadata["sessions"] = dg.MetadataValue.int(len(sessions))
    metadata["feature_columns"] = dg.MetadataValue.text(", ".join(feature_columns_of(frame)))
    metadata["dropped_warmup_bars"] = dg.MetadataValue.int(
        bars["timestamp"].nunique() - frame["date"].nunique()
    )
    yield dg.Output(frame, metadata=metadata)


class MinuteSplitSettings(DomainCheckedConfig):
    """Shares of whole sessions for training and validation; the rest tests (:class:`SessionSplitConfig`)."""

    train_fraction: float = default_of(SessionSplitConfig, "train_fraction")
    validation_fraction: float = default_of(SessionSplitConfig, "validation_fraction")

    def to_domain(self) -> SessionSplitConfig:
        return SessionSplitConfig(**self.model_dump())


@dg.asset(group_name=GROUP, compute_kind="pandas")
def minute_dataset_splits(
    config: MinuteSplitSettings, minute_features: pd.DataFrame
) -> dg.Output[DatasetSplits]:
    """Training, validation and test sessions of the minute features: whole sessions, in time order."""
    split = session_split(minute_features["date"], config.to_domain())
    parts = apply_split(minute_features, split)
    rows = [
        {
            "period": name,
            "first_bar": str(frame["date"].min()),
            "last_bar": str(frame["date"].max()),
            "sessions": frame["date"].dt.normalize().nunique(),
            "bars": frame["date"].nunique(),
        }
        for name, frame in parts.items()
    ]
    return dg.Output(DatasetSplits(split=split, **parts), metadata={"periods": markdown_table(rows)})


class MinuteTrainingSettings(DomainCheckedConfig):
    """The minute agent's PPO budget and seed (defaults: :class:`MinuteRecipe`); the environment, costs, fills
    and risk limits are the daily pipeline's defaults (:class:`EnvSpec`)."""

    total_timesteps: int = default_of(MinuteRecipe, "total_timesteps")
    n_steps: int = default_of(MinuteRecipe, "n_steps")
    batch_size: int = default_of(MinuteRecipe, "batch_size")
    seed: int = default_of(MinuteRecipe, "seed")

    def to_domain(self) -> MinuteRecipe:
        return MinuteRecipe(**self.model_dump())


@dataclass(frozen=True)
class MinuteAgent:
    """The PPO trained on minute bars, kept as bytes (it is not registered), with what it trained on."""

    policy_archive: bytes
    env_spec: EnvSpec
    feature_columns: tuple[str, ...]
    bar_length: pd.Timedelta
    recipe: MinuteRecipe

    def policy(self) -> TrainedPolicy:
        return policy_from_bytes("ppo", self.policy_archive)

    @property
    def periods_per_year(self) -> int:
        return intraday_periods_per_year(self.bar_length)


@dg.asset(group_name=GROUP, compute_kind="stable_baselines3")
def minute_agent(
    context: dg.AssetExecutionContext, config: MinuteTrainingSettings, minute_dataset_splits: DatasetSplits
) -> dg.Output[MinuteAgent]:
    """PPO (the pipeline's recipe, a small seeded budget) trained on the training sessions' minute bars."""
    from trading_core.agents.training import train_ppo

    recipe, env_spec = config.to_domain(), EnvSpec()
    train = period_market(minute_dataset_splits, "train")
    with single_torch_thread():  # the same policy on any machine
        policy = train_ppo(train, env_spec, recipe.ppo_config(), recipe.seed, report=context.log.info)
    agent = MinuteAgent(
        policy_to_bytes(policy),
        env_spec,
        tuple(minute_dataset_splits.feature_columns),
        infer_bar_minutes(minute_dataset_splits.full["date"]),
        recipe,
    )
    return dg.Output(
        agent,
        metadata={
            "seed": recipe.seed,
            "total_timesteps": recipe.total_timesteps,
            "bar_minutes": int(agent.bar_length / pd.Timedelta(minutes=1)),
            "training_bars": train.n_steps,
            "tickers": ", ".join(train.tickers),
        },
    )


class MinuteGateSettings(dg.Config):
    """The promotion gate's thresholds on the minute agent (defaults: :class:`PromotionThresholds`); VaR95 is per
    bar on minute bars."""

    min_sharpe: float = default_of(PromotionThresholds, "min_sharpe")
    max_drawdown: float = default_of(PromotionThresholds, "max_drawdown")
    max_var_95: float = default_of(PromotionThresholds, "max_var_95")
    must_beat_buy_and_hold: bool = default_of(PromotionThresholds, "must_beat_buy_and_hold")

    def to_domain(self) -> PromotionThresholds:
        return PromotionThresholds(**self.model_dump())


@dataclass(frozen=True)
class MinuteBacktestReport:
    """The minute agent over the unseen test sessions after costs, its leaderboard rows and the gate's verdict."""

    test: BacktestResult
    validation: BacktestResult
    leaderboard: pd.DataFrame
    gate: tuple[GateResult, ...]

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.gate)


MINUTE_GATE_CHECKS = {
    "minute_min_sharpe": "test Sharpe after costs (annualised over 252 x bars per session) at least the minimum",
    "minute_max_drawdown": "test max drawdown at most the configured limit",
    "minute_max_var_95": "test one-bar VaR95 at most the configured share of the portfolio",
    "minute_beats_buy_and_hold": "test Sharpe above equal-weight buy-and-hold",
}


@dg.asset(
    group_name=GROUP,
    compute_kind="backtest",
    # Not blocking: nothing is promoted from minute bars, the verdict is the result.
    check_specs=[
        dg.AssetCheckSpec(name=name, asset="minute_backtest", description=text)
        for name, text in MINUTE_GATE_CHECKS.items()
    ],
)
def minute_backtest(
    context: dg.AssetExecutionContext,
    config: MinuteGateSettings,
    minute_agent: MinuteAgent,
    minute_dataset_splits: DatasetSplits,
):
    """The minute agent backtested over the test sessions after costs against equal-weight buy-and-hold, with
    its leaderboard row and the promotion gate's criteria as checks."""
    policy, columns = minute_agent.policy(), [*BASE_COLUMNS, *minute_agent.feature_columns]
    periods = minute_agent.periods_per_year
    test, validation = (
        intraday_backtest(
            policy, period_market(minute_dataset_splits, name, columns), minute_agent.env_spec, periods
        )
        for name in ("test", "validation")
    )
    board = leaderboard_rows(test, validation, minute_agent.bar_length)
    thresholds = config.to_domain()
    gate = tuple(evaluate_gate(test.metrics, test.benchmark_metrics, thresholds))
    report = MinuteBacktestReport(test, validation, board, gate)
    split = minute_dataset_splits.split
    png = equity_curve_png(
        {
            MINUTE_CANDIDATE: test.equity.reset_index(drop=True),
            "equal-weight buy and hold": test.benchmark_equity.reset_index(drop=True),
        },
        f"Minute bars, test sessions {split.test_start.date()} .. {split.test_end.date()}",
    )
    verdict = (
        "passes the gate"
        if report.passed
        else "fails: " + "; ".join(r.description for r in gate if not r.passed)
    )
    context.log.info(f"{MINUTE_CANDIDATE}: {verdict}")
    yield dg.Output(
        report,
        metadata={
            "leaderboard": markdown_table(board.to_dict(orient="records")),
            "sharpe": number(test.metrics.sharpe),
            "buy_and_hold_sharpe": number(test.benchmark_metrics.sharpe),
            "periods_per_year": periods,
            "total_cost": number(test.total_cost),
            "trades": test.trades,
            "verdict": verdict,
            "equity_curve": png_metadata(png),
        },
    )
    for result in gate:
        yield dg.AssetCheckResult(
            check_name=f"minute_{result.name}",
            passed=result.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=result.description,
            metadata={"value": float(result.value), "threshold": float(result.threshold)},
        )
    if not thresholds.must_beat_buy_and_hold:
        yield dg.AssetCheckResult(
            check_name="minute_beats_buy_and_hold",
            passed=True,
            description="not required by the gate settings",
        )


__all__ = [
    "INTRADAY_SESSIONS",
    "MinuteAgent",
    "MinuteBacktestReport",
    "intraday_source_missing",
    "minute_agent",
    "minute_backtest",
    "minute_dataset_splits",
    "minute_features",
    "raw_minute_bars",
    "validated_minute_bars",
]
