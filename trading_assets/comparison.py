"""Champion against challenger: the versions holding both aliases traded over the same test window, side by side
with equal-weight buy-and-hold."""

from dataclasses import dataclass

import dagster as dg
import pandas as pd

from resources.mlflow_registry import CHALLENGER_ALIAS, CHAMPION_ALIAS, MlflowRegistryResource
from trading_assets.metadata import markdown_table, png_metadata
from trading_assets.selection import RegisteredCandidate
from trading_core.agents.decision_spec import DecisionSpec
from trading_core.allocators.prior import with_prior_column
from trading_core.data.splits import DatasetSplits
from trading_core.evaluation.backtester import BacktestResult, run_backtest
from trading_core.evaluation.plots import equity_curve_png
from trading_core.models.cnn_lstm import add_learned_features
from trading_core.models.cnn_lstm import learned_features as forecast_features
from trading_core.regimes.history import add_regime_features
from trading_core.regimes.model import RegimeModel, market_signals

COMPARED_ALIASES = (CHAMPION_ALIAS, CHALLENGER_ALIAS)
BUY_AND_HOLD = "equal-weight buy and hold"


@dataclass(frozen=True)
class ChampionChallengerReport:
    """Both aliases' versions over one test window: one row each (and buy-and-hold), their equity curves, and
    why an alias was left out.

    :param skipped: alias -> reason (no version holds it, or it cannot be traded on these features)
    """

    window: str
    table: pd.DataFrame
    equity: dict[str, pd.Series]
    skipped: dict[str, str]


def observed_frame(
    spec: DecisionSpec, features: pd.DataFrame, registry: MlflowRegistryResource
) -> pd.DataFrame:
    """The technical features with what the agent of ``spec`` observes besides: its own forecaster's outputs, its
    own regime model's probabilities (filtered forward) and its prior, cut to its tickers and columns."""
    frame = features
    if spec.forecaster_uri:
        forecaster = registry.load_forecaster(spec.forecaster_uri)
        frame = add_learned_features(features, forecast_features(forecaster, features))
    frame = frame[frame["tic"].isin(spec.tickers)]
    if spec.regime_model is not None:
        regime_model = RegimeModel.from_dict(spec.regime_model)
        frame = add_regime_features(
            frame, regime_model.filter(market_signals(frame, regime_model.config.volatility_window))
        )
    if spec.prior is not None:  # fit on the full history, as the agent saw it in training
        frame = with_prior_column(frame, spec.prior)
    missing = [c for c in spec.observation_columns if c not in frame.columns]
    if missing:
        raise ValueError(f"the features lack columns it observes: {', '.join(missing)}")
    return frame[spec.observation_columns]


def _row(label: str, result: BacktestResult) -> dict[str, object]:
    metrics, benchmark = result.metrics, result.benchmark_metrics
    return {
        "model": label,
        "sharpe": metrics.sharpe,
        "total_return": metrics.total_return,
        "max_drawdown": metrics.max_drawdown,
        "turnover": metrics.turnover,
        "cost_drag": metrics.cost_drag,
        "sharpe_vs_buy_and_hold": metrics.sharpe - benchmark.sharpe,
        "return_vs_buy_and_hold": metrics.total_return - benchmark.total_return,
    }


def _benchmark_row(result: BacktestResult) -> dict[str, object]:
    metrics = result.benchmark_metrics
    return {
        "model": BUY_AND_HOLD,
        "sharpe": metrics.sharpe,
        "total_return": metrics.total_return,
        "max_drawdown": metrics.max_drawdown,
        "turnover": metrics.turnover,
        "cost_drag": metrics.cost_drag,
        "sharpe_vs_buy_and_hold": 0.0,
        "return_vs_buy_and_hold": 0.0,
    }


def compare_aliases(
    registry: MlflowRegistryResource, features: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp
) -> ChampionChallengerReport:
    """Backtest the versions holding ``champion`` and ``challenger`` from ``start`` to ``end``, each on the
    features it observes and in the environment it trained in."""
    rows, equity, skipped = [], {}, {}
    benchmark: BacktestResult | None = None
    traded: dict[str, str] = {}
    for alias in COMPARED_ALIASES:
        version = registry.version_for_alias(alias)
        if version is None:
            skipped[alias] = f"no version of {registry.model_name} holds '{alias}'"
            continue
        label = f"{alias} v{version}"
        if version in traded:  # one version holding both aliases: traded once
            skipped[alias] = f"v{version} holds '{traded[version]}' too: the same model"
            continue
        policy, spec = registry.load_decision_bundle(version)
        if spec is None:
            skipped[alias] = (
                f"v{version} was registered without a decision spec: its observations are unknown"
            )
            continue
        try:
            frame = observed_frame(spec, features, registry)
        except ValueError as refusal:
            skipped[alias] = f"v{version}: {refusal}"
            continue
        window = frame[(frame["date"] >= start) & (frame["date"] <= end)]
        result = run_backtest(policy, spec.market_of(window), spec.env_spec)
        traded[version] = alias
        rows.append(_row(label, result))
        equity[label] = result.equity
        benchmark = benchmark or result
    if benchmark is not None:
        rows.append(_benchmark_row(benchmark))
        equity[BUY_AND_HOLD] = benchmark.benchmark_equity
    return ChampionChallengerReport(f"{start.date()}..{end.date()}", pd.DataFrame(rows), equity, skipped)


@dg.asset(group_name="evaluation", compute_kind="backtest")
def champion_vs_challenger(
    context: dg.AssetExecutionContext,
    registered_model: RegisteredCandidate,
    learned_features: DatasetSplits,
    features: pd.DataFrame,
    model_registry: MlflowRegistryResource,
) -> dg.Output[ChampionChallengerReport]:
    """The versions holding ``champion`` and ``challenger`` backtested over this run's test window, side by side
    with equal-weight buy-and-hold (an alias no version holds is named and left out)."""
    split = learned_features.split
    report = compare_aliases(model_registry, features, split.test_start, split.test_end)
    for alias, reason in report.skipped.items():
        context.log.info(f"champion_vs_challenger: {alias} left out: {reason}")
    metadata: dict[str, object] = {
        "window": report.window,
        "table": markdown_table(report.table.to_dict(orient="records")),
        "skipped": dg.MetadataValue.md(
            "\n".join(f"- {alias}: {reason}" for alias, reason in report.skipped.items()) or "none"
        ),
    }
    if report.equity:
        png = equity_curve_png(
            {label: curve / curve.iloc[0] for label, curve in report.equity.items()},
            f"Champion vs challenger, test {report.window}",
            "growth of 1",
        )
        metadata["equity_curves"] = png_metadata(png)
        model_registry.log_evaluation(
            registered_model.run_id,
            metrics={},
            files={"champion_vs_challenger.png": png},
            tables={"champion_vs_challenger.json": report.table.to_dict(orient="records")},
        )
    return dg.Output(report, metadata=metadata)
