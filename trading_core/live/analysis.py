"""What paper trading showed: slippage of the broker's fills against the simulator's, and champion vs challenger."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from trading_core.data.calendar import EXCHANGE_TIMEZONE
from trading_core.evaluation.metrics import sharpe_ratio


def slippage_table(fills: pd.DataFrame) -> pd.DataFrame:
    """Broker fills next to the simulated fills of the same orders, with slippage in basis points.

    Positive slippage is a cost: a buy filled above, or a sell below, what the shared cost model expected.

    :param fills: the state store's fills (``source`` ``broker`` and ``simulated``)
    """
    keys = ["client_order_id"]
    broker = (
        fills[fills["source"] == "broker"]
        .groupby(keys, as_index=False)
        .agg(
            symbol=("symbol", "first"),
            side=("side", "first"),
            qty=("qty", "sum"),
            filled_at=("filled_at", "max"),
            broker_price=("price", lambda p: float(np.average(p, weights=fills.loc[p.index, "qty"]))),
        )
    )
    simulated = (
        fills[fills["source"] == "simulated"]
        .groupby(keys, as_index=False)
        .agg(
            simulated_qty=("qty", "sum"),
            simulated_price=("price", lambda p: float(np.average(p, weights=fills.loc[p.index, "qty"]))),
        )
    )
    table = broker.merge(simulated, on=keys, how="inner")
    sign = np.where(table["side"] == "buy", 1.0, -1.0)
    table["slippage_bps"] = sign * (table["broker_price"] / table["simulated_price"] - 1.0) * 1e4
    return table.sort_values("filled_at", ignore_index=True)


@dataclass(frozen=True)
class SlippageDrift:
    """Summary of slippage over the fills, and whether it drifts away from the simulator's."""

    fills: int
    mean_bps: float
    median_bps: float
    p95_abs_bps: float
    p_value: float
    trend_bps_per_day: float
    drifted: bool

    def as_dict(self) -> dict[str, float | int | bool]:
        return dict(self.__dict__)


def slippage_drift(table: pd.DataFrame, alpha: float = 0.01, tolerance_bps: float = 2.0) -> SlippageDrift:
    """Mean slippage, a t-test of "mean is zero" and its linear trend; drifted when significant and material.

    :param table: output of :func:`slippage_table`
    :param alpha: significance level of the t-test
    :param tolerance_bps: mean slippage below this is immaterial even when significant
    """
    values = table["slippage_bps"].to_numpy(dtype=np.float64)
    if len(values) < 2:
        return SlippageDrift(
            len(values), float(np.mean(values)) if len(values) else 0.0, 0.0, 0.0, 1.0, 0.0, False
        )
    if np.ptp(values) == 0:
        p_value = 1.0 if values[0] == 0 else 0.0
    else:
        p_value = float(stats.ttest_1samp(values, 0.0).pvalue)
    days = (table["filled_at"] - table["filled_at"].iloc[0]).dt.total_seconds().to_numpy() / 86_400
    trend = float(np.polyfit(days, values, 1)[0]) if np.ptp(days) > 0 else 0.0
    mean = float(values.mean())
    return SlippageDrift(
        fills=len(values),
        mean_bps=mean,
        median_bps=float(np.median(values)),
        p95_abs_bps=float(np.quantile(np.abs(values), 0.95)),
        p_value=p_value,
        trend_bps_per_day=trend,
        drifted=bool(p_value < alpha and abs(mean) >= tolerance_bps),
    )


@dataclass(frozen=True)
class ABComparison:
    """Champion against challenger on the same bars: per-session returns and a paired test."""

    sessions: int
    champion_return: float
    challenger_return: float
    champion_sharpe: float
    challenger_sharpe: float
    mean_difference: float
    p_value: float
    ci_low: float
    ci_high: float
    verdict: str

    def as_dict(self) -> dict[str, float | int | str]:
        return dict(self.__dict__)


def session_returns(curve: pd.Series) -> pd.Series:
    """Return of each trading session (exchange day) of an equity curve indexed by UTC bar time."""
    days = curve.index.tz_convert(EXCHANGE_TIMEZONE).normalize()
    last = curve.groupby(days).last()
    first = curve.groupby(days).first()
    # A session's return runs from the previous session's close; the first session from its first mark.
    previous = last.shift(1).fillna(first)
    return last / previous - 1.0


def compare_champion_challenger(
    champion: pd.Series, challenger: pd.Series, min_sessions: int = 20, alpha: float = 0.05, seed: int = 0
) -> ABComparison:
    """Paired comparison of per-session returns on the shared bars, with a seeded bootstrap interval.

    :param champion: champion equity by bar time
    :param challenger: challenger equity by bar time
    :param min_sessions: sessions needed before a verdict is given
    :param alpha: significance level of the paired t-test (and 1 - coverage of the interval)
    :param seed: seeds the bootstrap
    """
    shared = champion.index.intersection(challenger.index)
    if len(shared) < 2:
        raise ValueError("champion and challenger share fewer than two marks")
    a, b = session_returns(champion.loc[shared]), session_returns(challenger.loc[shared])
    difference = (b - a).to_numpy()
    n = len(difference)
    if n >= 2 and np.ptp(difference) > 0:
        p_value = float(stats.ttest_rel(b.to_numpy(), a.to_numpy()).pvalue)
        rng = np.random.default_rng(seed)
        means = rng.choice(difference, size=(2_000, n), replace=True).mean(axis=1)
        low, high = (float(q) for q in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
    else:
        p_value, low, high = 1.0, float(difference.mean()), float(difference.mean())

    if n < min_sessions:
        verdict = f"insufficient evidence: {n} of {min_sessions} sessions"
    elif p_value < alpha:
        verdict = "challenger better" if difference.mean() > 0 else "challenger worse"
    else:
        verdict = "no significant difference"
    return ABComparison(
        sessions=n,
        champion_return=float(champion.loc[shared].iloc[-1] / champion.loc[shared].iloc[0] - 1),
        challenger_return=float(challenger.loc[shared].iloc[-1] / challenger.loc[shared].iloc[0] - 1),
        champion_sharpe=sharpe_ratio(a),
        challenger_sharpe=sharpe_ratio(b),
        mean_difference=float(difference.mean()),
        p_value=p_value,
        ci_low=low,
        ci_high=high,
        verdict=verdict,
    )
