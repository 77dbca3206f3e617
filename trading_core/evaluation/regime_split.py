"""Performance split by market regime (how a curve fared in calm and in turbulent markets), and the lasting
regime change since a model's training that monitoring watches for.

A daily return runs from the close of day t-1 to the close of day t. It belongs to the regime known at the close
of t-1, when the decision that earned it was taken: the regime of day t is only known at t's close, after the
return is made, so attributing by it would look ahead. Each regime's figures are those of its own returns chained
into one curve, computed by :func:`~trading_core.evaluation.metrics.compute_metrics` (annualised with
:data:`~trading_core.market.measures.PERIODS_PER_YEAR`), so they are the very figures of the whole curve applied
to a subset of days.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from trading_core.evaluation.metrics import compute_metrics, daily_returns
from trading_core.regimes.model import RegimeModel, market_signals, regime_changes

REGIME_FIGURE_COLUMNS: tuple[str, ...] = (
    "days",
    "share_of_days",
    "sharpe",
    "annual_return",
    "annual_volatility",
    "max_drawdown",
    "hit_rate",
)


def _check_series(values: pd.Series, name: str) -> None:
    if not isinstance(values, pd.Series):
        raise ValueError(f"{name} must be a pandas Series, got {type(values).__name__}")
    if not isinstance(values.index, pd.DatetimeIndex):
        raise ValueError(
            f"{name} must be indexed by date (a DatetimeIndex), got {type(values.index).__name__}"
        )
    if not values.index.is_monotonic_increasing or values.index.has_duplicates:
        raise ValueError(f"{name} dates must be increasing and unique")
    if values.isna().any():
        raise ValueError(f"{name} holds NaN on {values.index[values.isna()][0].date()}")


def validate_regimes(regimes: pd.Series) -> None:
    """Refuse regime labels that are not non-negative integers on increasing, unique dates, in one line."""
    _check_series(regimes, "regimes")
    labels = regimes.to_numpy()
    if len(labels) and (
        not np.issubdtype(labels.dtype, np.number) or (labels < 0).any() or (labels % 1 != 0).any()
    ):
        raise ValueError("regimes must hold non-negative integer labels (0 = calmest)")


def decision_regimes(equity: pd.Series, regimes: pd.Series) -> pd.Series:
    """The regime each daily return of ``equity`` is attributed to: the one known at the close before it.

    The return on date t (``equity[t] / equity[t-1] - 1``, t-1 the curve's previous date) takes the last regime
    label dated at or before t-1; labels after t-1 are never read. Returns before the first label get ``<NA>``.

    :param equity: an equity curve indexed by date
    :param regimes: integer regime labels indexed by date
    :return: nullable integer labels indexed like the returns (the curve's dates but its first)
    """
    _check_series(equity, "equity")
    validate_regimes(regimes)
    known_at_close = regimes.reindex(equity.index, method="ffill")  # last label at or before each close
    return known_at_close.shift(1).iloc[1:].astype("Int64").rename("regime")


def _regime_curve(returns: pd.Series) -> pd.Series:
    """The regime's returns chained into a growth-of-1 curve (one more point than returns)."""
    return pd.Series(np.concatenate([[1.0], np.cumprod(1.0 + returns.to_numpy(dtype=float))]))


def figures_by_regime(equity: pd.Series, regimes: pd.Series, n_regimes: int | None = None) -> pd.DataFrame:
    """Days, share of days, Sharpe, annual return and volatility, max drawdown and hit rate per regime.

    Each daily return is attributed to the regime known at the close before it (:func:`decision_regimes`), so
    the split never uses a regime the decision could not know. A regime's drawdown is that of its own returns
    chained (the losses of its days, with the other regimes' days left out); its hit rate is the share of its
    days with a gain among those where the value moved.

    :param equity: an equity curve indexed by date (positive values)
    :param regimes: integer regime labels (0 = calmest) indexed by date; dates need not match the curve's
    :param n_regimes: report regimes ``0 .. n_regimes - 1`` (a regime without days gets ``days = 0`` and NaN
        figures); ``None`` reports the regimes the curve's returns fall in
    :return: one row per regime (index ``regime``), columns :data:`REGIME_FIGURE_COLUMNS`
    """
    if n_regimes is not None and n_regimes < 1:
        raise ValueError(f"n_regimes must be at least 1, got {n_regimes}")
    labels = decision_regimes(equity, regimes)
    if (equity <= 0).any():
        raise ValueError(f"equity must be positive, got {float(equity.min())}")
    returns = daily_returns(equity)  # equity is positive: exactly one return per date after the first
    known = labels.notna()
    observed = sorted(int(k) for k in labels[known].unique())
    if n_regimes is not None and observed and observed[-1] >= n_regimes:
        raise ValueError(f"regimes holds label {observed[-1]} but n_regimes is {n_regimes}")
    reported = range(n_regimes) if n_regimes is not None else observed
    total = int(known.sum())
    rows = {}
    for regime in reported:
        own = returns[(labels == regime).fillna(False)]
        if own.empty:
            figures = dict.fromkeys(REGIME_FIGURE_COLUMNS[2:], np.nan)
            rows[regime] = {"days": 0, "share_of_days": 0.0, **figures}
            continue
        metrics = compute_metrics(_regime_curve(own))
        rows[regime] = {
            "days": len(own),
            "share_of_days": len(own) / total,
            "sharpe": metrics.sharpe,
            "annual_return": metrics.annual_return,
            "annual_volatility": metrics.annual_volatility,
            "max_drawdown": metrics.max_drawdown + 0.0,  # a curve that never falls gives -0.0
            "hit_rate": metrics.win_rate,
        }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(REGIME_FIGURE_COLUMNS))
    table.index.name = "regime"
    return table.astype({"days": "int64"})


def returns_by_regime_sharpe(returns: pd.Series, regimes: pd.Series, n_regimes: int) -> dict[int, float]:
    """Sharpe of daily ``returns`` per regime when only the returns are kept (no equity curve).

    The return dated t is attributed to the last regime label dated strictly before t: with labels on every
    market date (a regime frame's dates) that is the regime known at the close of t-1, as in
    :func:`figures_by_regime`.

    :param returns: daily simple returns indexed by their end date
    :param regimes: integer regime labels indexed by date
    :param n_regimes: regimes reported, ``0 .. n_regimes - 1``
    :return: ``{regime: Sharpe}``, NaN for a regime without returns
    """
    if returns.empty:  # a period without figures (any index) has no regime figures either
        return dict.fromkeys(range(n_regimes), float("nan"))
    _check_series(returns, "returns")
    validate_regimes(regimes)
    before = regimes.index[regimes.index < returns.index[0]]
    # Without a label before the first return, that return has no decision regime (a day before it has none).
    start = before[-1] if len(before) else returns.index[0] - pd.Timedelta(days=1)
    growth = np.concatenate([[1.0], np.cumprod(1.0 + returns.to_numpy(dtype=float))])
    equity = pd.Series(growth, index=pd.DatetimeIndex([start, *returns.index]))
    table = figures_by_regime(equity, regimes, n_regimes)
    return {int(regime): float(value) for regime, value in table["sharpe"].items()}


def compare_by_regime(curves: Mapping[str, pd.Series], regimes: pd.Series, n_regimes: int) -> pd.DataFrame:
    """:func:`figures_by_regime` of several curves over the same regimes, one row per (regime, curve).

    :param curves: equity curves by name (``{"agent": ..., "buy_and_hold": ...}``)
    :param regimes: integer regime labels indexed by date
    :param n_regimes: regimes reported, ``0 .. n_regimes - 1``
    :return: columns ``regime``, ``curve`` and :data:`REGIME_FIGURE_COLUMNS`
    """
    if not curves:
        raise ValueError("curves must name at least one equity curve")
    parts = [
        figures_by_regime(equity, regimes, n_regimes).reset_index().assign(curve=name)
        for name, equity in curves.items()
    ]
    # A stable sort by regime keeps the curves in the order given within each regime.
    table = pd.concat(parts, ignore_index=True).sort_values("regime", kind="stable")
    return table[["regime", "curve", *REGIME_FIGURE_COLUMNS]].reset_index(drop=True)


@dataclass(frozen=True)
class RegimeShift:
    """The market regime in force when a model's training ended, the one in force now, and the lasting changes
    in between.

    A regime is *in force* once a spell of it has held ``min_duration`` dates (:func:`regime_changes`); shorter
    spells are noise and leave the regime in force as it was.

    :param since: the model's last training date
    :param as_of: the last filtered date
    :param regime_then: the regime in force at ``since``, from the dates up to ``since`` only (``None`` when no
        spell had held by then)
    :param regime_now: the regime in force at ``as_of``
    :param current_regime: the filtered regime of ``as_of`` itself (it may be a spell too short to count)
    :param changes: the lasting changes confirmed after ``since`` (:func:`regime_changes` rows)
    :param min_duration: dates a spell must hold to count
    """

    since: pd.Timestamp
    as_of: pd.Timestamp
    regime_then: int | None
    regime_now: int | None
    current_regime: int
    changes: pd.DataFrame
    min_duration: int

    @property
    def changed(self) -> bool:
        """Whether the regime in force now differs from the one in force when training ended."""
        return (
            self.regime_then is not None
            and self.regime_now is not None
            and self.regime_now != self.regime_then
        )

    @property
    def key(self) -> str:
        """Names the change (``0-to-1-since-2020-02-24``): the same change seen again has the same key."""
        if not self.changed:
            return ""
        start = self.changes["date"].iloc[-1]
        return f"{self.regime_then}-to-{self.regime_now}-since-{start.date()}"

    def describe(self) -> str:
        """One line for logs and run tags; empty when the regime in force has not changed."""
        if not self.changed:
            return ""
        last = self.changes.iloc[-1]
        return (
            f"regime {self.regime_then} at the end of training ({self.since.date()}) is regime {self.regime_now} "
            f"since {last['date'].date()}, {int(last['duration'])} dates to {self.as_of.date()} "
            f"(lasting: at least {self.min_duration})"
        )


def _regime_in_force(labels: pd.Series, min_duration: int) -> int | None:
    """The regime in force after the last of ``labels``: that of the last spell that held ``min_duration``."""
    spell = (labels != labels.shift()).cumsum()
    lengths = labels.groupby(spell).agg(["first", "size"])
    held = lengths[lengths["size"] >= min_duration]
    return int(held["first"].iloc[-1]) if len(held) else None


def regime_shift_since(filtered: pd.DataFrame, since: pd.Timestamp | str, min_duration: int) -> RegimeShift:
    """Whether the regime in force changed after ``since`` (a model's last training date), and how.

    The regime in force at ``since`` is read from the dates up to ``since`` only, as it was known then.

    :param filtered: causal filtered regimes indexed by date with a ``regime`` column
        (:meth:`~trading_core.regimes.model.RegimeModel.filter`), starting before ``since``
    :param since: the reference date
    :param min_duration: dates a new regime must hold to count as a change
    """
    if "regime" not in filtered.columns:
        raise ValueError("filtered lacks the column 'regime'")
    validate_regimes(filtered["regime"])
    if min_duration < 1:
        raise ValueError(f"min_duration must be at least 1, got {min_duration}")
    since = pd.Timestamp(since)
    labels = filtered["regime"]
    if labels.empty or labels.index[0] > since:
        first = labels.index[0].date() if len(labels) else "none"
        raise ValueError(f"filtered regimes must start by since={since.date()}, first date {first}")
    changes = regime_changes(filtered, min_duration)
    return RegimeShift(
        since=since,
        as_of=pd.Timestamp(labels.index[-1]),
        regime_then=_regime_in_force(labels.loc[:since], min_duration),
        regime_now=_regime_in_force(labels, min_duration),
        current_regime=int(labels.iloc[-1]),
        changes=changes[changes["confirmed_on"] > since].reset_index(drop=True),
        min_duration=min_duration,
    )


def regime_shift_of_bars(
    model: RegimeModel, bars: pd.DataFrame, since: pd.Timestamp | str, min_duration: int
) -> RegimeShift:
    """:func:`regime_shift_since` of a fitted regime model filtered forward over ``bars``.

    :param model: the fitted regime model (e.g. rebuilt with :meth:`RegimeModel.from_dict` from its stored dict)
    :param bars: long bars (``date``, ``tic``, ``close``) of the universe the model was fitted on, from before
        ``since`` to the last date monitored
    :param since: the monitored model's last training date
    :param min_duration: dates a new regime must hold to count as a change
    """
    filtered = model.filter(market_signals(bars, model.config.volatility_window))
    return regime_shift_since(filtered, since, min_duration)


__all__ = [
    "REGIME_FIGURE_COLUMNS",
    "RegimeShift",
    "compare_by_regime",
    "decision_regimes",
    "figures_by_regime",
    "regime_shift_of_bars",
    "regime_shift_since",
    "returns_by_regime_sharpe",
    "validate_regimes",
]
