"""Stress tests: replays of crises inside the data and synthetic shocks applied to the test period.

Synthetic shocks rewrite the bars from the shock date on and recompute features from the shocked bars, so
the agent sees the shocked market exactly as it would have; bars before the shock are untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtester import run_backtest
from trading_core.features.batch import build_features
from trading_core.market.arrays import MarketArrays, as_frame, as_market
from trading_core.market.costs import CostModel, LinearImpact, SquareRootImpact
from trading_core.market.execution import ExecutionConfig
from trading_core.market.simulator import SimulationConfig

CRISES: dict[str, tuple[str, str]] = {
    "aug_2011_us_downgrade": ("2011-07-22", "2011-08-31"),
    "aug_2015_china_devaluation": ("2015-08-10", "2015-09-30"),
    "q4_2018_selloff": ("2018-10-01", "2018-12-31"),
    "feb_apr_2020_covid_crash": ("2020-02-18", "2020-04-30"),
}
PRICE_COLUMNS = ["open", "high", "low", "close"]


@dataclass(frozen=True)
class StressConfig:
    """Where the synthetic shocks hit and the limit that joins the promotion gate.

    :param max_stress_drawdown: largest acceptable max drawdown of the agent in any scenario
    :param shock_offset: test dates before the synthetic shocks hit, so the agent holds positions
    :param min_dates: fewest dates of a crisis inside the data for its replay to run
    """

    max_stress_drawdown: float = 0.25
    shock_offset: int = 10
    min_dates: int = 10


@dataclass(frozen=True)
class StressResult:
    """The agent and equal-weight buy-and-hold through one scenario."""

    name: str
    kind: str
    start: pd.Timestamp
    end: pd.Timestamp
    equity: pd.Series
    benchmark_equity: pd.Series
    max_drawdown: float
    total_return: float
    var_95: float
    benchmark_max_drawdown: float
    benchmark_return: float
    interventions: int

    def row(self) -> dict[str, object]:
        return {
            "scenario": self.name,
            "kind": self.kind,
            "period": f"{self.start.date()}..{self.end.date()}",
            "return": self.total_return,
            "max_drawdown": self.max_drawdown,
            "var_95": self.var_95,
            "buy_and_hold_return": self.benchmark_return,
            "buy_and_hold_max_drawdown": self.benchmark_max_drawdown,
            "risk_interventions": self.interventions,
        }


def _rebuild_from_returns(bars: pd.DataFrame, start: pd.Timestamp, new_returns: pd.DataFrame) -> pd.DataFrame:
    """Replace close-to-close returns from ``start`` on, scaling each bar's OHLC by the change of its close."""
    closes = bars.pivot(index="date", columns="tic", values="close").sort_index()
    before = closes.index < start
    rebuilt = closes.copy()
    anchor = closes[before].iloc[-1]
    rebuilt.loc[~before] = anchor.to_numpy() * (1.0 + new_returns.loc[~before]).cumprod().to_numpy()
    ratio = (rebuilt / closes).stack().rename("ratio").reset_index()
    shocked = bars.merge(ratio, on=["date", "tic"], how="left")
    shocked[PRICE_COLUMNS] = shocked[PRICE_COLUMNS].mul(shocked["ratio"], axis=0)
    return shocked.drop(columns="ratio")


def shock_gap(bars: pd.DataFrame, start: pd.Timestamp, gap: float = -0.10) -> pd.DataFrame:
    """Every asset opens ``gap`` lower on ``start`` and stays there (all prices from that bar scaled)."""
    shocked = bars.copy()
    after = shocked["date"] >= start
    shocked.loc[after, PRICE_COLUMNS] *= 1.0 + gap
    return shocked


def shock_volatility(bars: pd.DataFrame, start: pd.Timestamp, factor: float = 3.0) -> pd.DataFrame:
    """Daily return deviations from their mean multiplied by ``factor`` from ``start`` on."""
    closes = bars.pivot(index="date", columns="tic", values="close").sort_index()
    returns = closes.ffill().pct_change().fillna(0.0)  # a missing day carries its close (no padding warning)
    window = returns[returns.index >= start]
    scaled = window.mean() + factor * (window - window.mean())
    returns.loc[window.index] = scaled.clip(lower=-0.95)
    return _rebuild_from_returns(bars, start, returns)


def shock_correlation(bars: pd.DataFrame, start: pd.Timestamp) -> pd.DataFrame:
    """Correlations go to 1 from ``start`` on: every asset moves with the cross-sectional mean, keeping its vol."""
    closes = bars.pivot(index="date", columns="tic", values="close").sort_index()
    returns = closes.ffill().pct_change().fillna(0.0)  # a missing day carries its close (no padding warning)
    window = returns[returns.index >= start]
    market = window.mean(axis=1)
    scale = window.std() / max(float(market.std()), 1e-12)
    returns.loc[window.index] = np.outer(market.to_numpy(), scale.to_numpy()).clip(min=-0.95)
    return _rebuild_from_returns(bars, start, returns)


def liquidity_drop(
    config: SimulationConfig, impact_factor: float = 10.0, cap_divisor: float = 10.0
) -> SimulationConfig:
    """Market impact ``impact_factor`` times larger and the participation cap ``cap_divisor`` times smaller."""
    impact = config.cost_model.impact
    if isinstance(impact, LinearImpact):
        impact = replace(impact, alpha=impact.alpha * impact_factor, beta=impact.beta * impact_factor)
    elif isinstance(impact, SquareRootImpact):
        impact = replace(impact, eta=impact.eta * impact_factor, beta=impact.beta * impact_factor)
    else:
        linear = LinearImpact()
        impact = replace(linear, alpha=linear.alpha * impact_factor, beta=linear.beta * impact_factor)
    cap = config.execution.participation_cap
    if cap is None:
        cap = ExecutionConfig().participation_cap
    execution = replace(config.execution, participation_cap=cap / cap_divisor)
    return replace(config, cost_model=CostModel(config.cost_model.commission, impact), execution=execution)


def _scenario(name: str, kind: str, policy, market: MarketArrays, env_spec: EnvSpec) -> StressResult:
    result = run_backtest(policy, market, env_spec)
    interventions = 0 if result.record is None else len(result.record.interventions)
    return StressResult(
        name=name,
        kind=kind,
        start=result.equity.index[0],
        end=result.equity.index[-1],
        equity=result.equity,
        benchmark_equity=result.benchmark_equity,
        max_drawdown=result.metrics.max_drawdown,
        total_return=result.metrics.total_return,
        var_95=result.metrics.var_95,
        benchmark_max_drawdown=result.benchmark_metrics.max_drawdown,
        benchmark_return=result.benchmark_metrics.total_return,
        interventions=interventions,
    )


def run_stress_tests(
    policy,
    bars: pd.DataFrame,
    features: pd.DataFrame | MarketArrays,
    test_start: pd.Timestamp,
    test_end: pd.Timestamp,
    env_spec: EnvSpec,
    shock_offset: int = StressConfig.shock_offset,
    min_dates: int = StressConfig.min_dates,
    rebuild: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> list[StressResult]:
    """Every crisis replay found in the features and every synthetic shock on the test period.

    :param policy: the agent (SB3 ``predict``)
    :param bars: validated bars over the whole history (shocks need the history for indicator warm-up)
    :param features: features computed from ``bars``
    :param test_start: first date of the test period
    :param test_end: last date of the test period
    :param shock_offset: test dates before the synthetic shocks hit, so the agent holds positions
    :param min_dates: fewest dates of a crisis inside the features for its replay to run
    :param rebuild: bars -> the agent's features, for shocked bars (default: technical features rebuilt and
        the recorded VIX kept)
    """
    # Every scenario trades the universe and features of ``features`` (the agent's): a window is a view of its
    # arrays, and features rebuilt from shocked bars are put on the same tickers and feature order.
    market = as_market(features)
    features = as_frame(features)

    def on_universe(frame: pd.DataFrame) -> MarketArrays:
        # The same sector labels too, so a sector-exposure limit binds in the shocked market as in the real one.
        rebuilt = MarketArrays.from_features(frame, list(market.feature_names), tickers=market.tickers)
        return replace(rebuilt, sectors=market.sectors)

    results = []
    for name, (start, end) in CRISES.items():
        window = market.between(start, end)
        if window.n_steps >= min_dates:
            results.append(_scenario(name, "historical", policy, window, env_spec))

    test_dates = pd.DatetimeIndex(sorted(features.loc[features["date"] >= test_start, "date"].unique()))
    test_dates = test_dates[test_dates <= test_end]
    shock_date = test_dates[min(shock_offset, len(test_dates) - 1)]

    def test_window(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[(frame["date"] >= test_start) & (frame["date"] <= test_end)]

    use_turbulence = "turbulence" in features.columns
    for name, shocked in (
        ("gap_down_10pct", shock_gap(bars, shock_date)),
        ("volatility_x3", shock_volatility(bars, shock_date)),
        ("correlations_to_1", shock_correlation(bars, shock_date)),
    ):
        if rebuild is not None:
            shocked_features = rebuild(shocked)
        else:
            shocked_features = build_features(shocked, use_turbulence=use_turbulence)
            if "vix" in features.columns:
                # VIX is an input, not derived from the bars: the shocked market keeps the recorded VIX.
                vix = features[["date", "vix"]].drop_duplicates("date")
                shocked_features = shocked_features.merge(vix, on="date", how="inner")
        shocked_features = shocked_features[list(features.columns)]
        results.append(
            _scenario(name, "synthetic", policy, on_universe(test_window(shocked_features)), env_spec)
        )
    if env_spec.engine == "fast":
        illiquid = replace(env_spec, simulation=liquidity_drop(env_spec.simulation))
        test = market.between(test_start, test_end)
        results.append(_scenario("liquidity_drop", "synthetic", policy, test, illiquid))
    return results
