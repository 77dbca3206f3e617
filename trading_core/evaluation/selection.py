"""Choosing agents by their validation backtests, as FinRL's ensemble strategy does.

FinRL trains several agents, backtests each on a validation window and trades the next window with the one
whose validation Sharpe is highest (:func:`select_by_validation_sharpe`, per rebalance window in
:func:`rolling_selection`). :func:`weighted_ensemble_from_validation` instead blends every agent's continuous
action with weights from the same validation Sharpe ratios.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from trading_core.agents.ensemble import EnsembleConfig, Policy, WeightedEnsemblePolicy, softmax_weights
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtester import run_backtest
from trading_core.evaluation.walk_forward import stitch
from trading_core.market.arrays import MarketArrays, as_market, date_window


def validation_sharpes(
    candidates: Mapping[str, Policy], validation_features: pd.DataFrame | MarketArrays, env_spec: EnvSpec
) -> dict[str, float]:
    """Sharpe ratio of each candidate's backtest over the validation window.

    :param candidates: policies by name
    :param validation_features: features frame or arrays of the validation window
    :param env_spec: engine and settings the candidates trained in
    """
    if not candidates:
        raise ValueError("no candidates to evaluate")
    market = as_market(validation_features)  # once for every candidate
    return {
        name: float(run_backtest(policy, market, env_spec).metrics.sharpe)
        for name, policy in candidates.items()
    }


def _best(sharpes: Mapping[str, float]) -> str:
    # NaN never wins; ties go to the first candidate, so the choice does not depend on float noise elsewhere.
    return max(sharpes, key=lambda name: sharpes[name] if math.isfinite(sharpes[name]) else -math.inf)


def select_by_validation_sharpe(
    candidates: Mapping[str, Policy], validation_features: pd.DataFrame | MarketArrays, env_spec: EnvSpec
) -> tuple[str, dict[str, float]]:
    """FinRL's selection: the candidate with the highest validation Sharpe (the first one on ties).

    :param candidates: policies by name
    :param validation_features: features frame or arrays of the validation window
    :param env_spec: engine and settings the candidates trained in
    :return: the chosen name and every candidate's Sharpe ratio
    """
    sharpes = validation_sharpes(candidates, validation_features, env_spec)
    return _best(sharpes), sharpes


@dataclass(frozen=True)
class RebalanceWindow:
    """A validation window and the trade window that follows it (inclusive dates)."""

    validation_start: pd.Timestamp
    validation_end: pd.Timestamp
    trade_start: pd.Timestamp
    trade_end: pd.Timestamp

    def __post_init__(self) -> None:
        if not (self.validation_start <= self.validation_end < self.trade_start <= self.trade_end):
            raise ValueError(f"validation must precede trading without overlap: {self}")

    def validation_slice(self, features: pd.DataFrame | MarketArrays) -> pd.DataFrame | MarketArrays:
        return date_window(features, self.validation_start, self.validation_end)

    def trade_slice(self, features: pd.DataFrame | MarketArrays) -> pd.DataFrame | MarketArrays:
        return date_window(features, self.trade_start, self.trade_end)


def rebalance_windows(
    dates: pd.Series | pd.DatetimeIndex,
    rebalance_window: int = EnsembleConfig.rebalance_dates,
    validation_window: int = EnsembleConfig.validation_dates,
) -> list[RebalanceWindow]:
    """FinRL's consecutive windows: validate on ``validation_window`` dates, trade ``rebalance_window`` more.

    Window ``k`` trades dates ``[v + k r, v + (k + 1) r)`` after validating on the ``v`` dates before them; a
    trailing partial trade window is dropped, as in FinRL's ``DRLEnsembleAgent``.

    :param dates: dates of the period to trade, validation history included
    :param rebalance_window: trading dates per window
    :param validation_window: validation dates before each trade window
    """
    unique = pd.DatetimeIndex(pd.Series(dates).drop_duplicates().sort_values())
    if rebalance_window < 1 or validation_window < 2:
        raise ValueError("need rebalance_window >= 1 and validation_window >= 2")
    return [
        RebalanceWindow(
            validation_start=unique[end - rebalance_window - validation_window],
            validation_end=unique[end - rebalance_window - 1],
            trade_start=unique[end - rebalance_window],
            trade_end=unique[end - 1],
        )
        for end in range(validation_window + rebalance_window, len(unique) + 1, rebalance_window)
    ]


@dataclass(frozen=True)
class WindowSelection:
    """The agent chosen for one trade window and every candidate's validation Sharpe."""

    window: RebalanceWindow
    chosen: str
    sharpes: dict[str, float] = field(hash=False)


def rolling_selection(
    candidates: Mapping[str, Policy] | Sequence[Mapping[str, Policy]],
    features: pd.DataFrame | MarketArrays,
    windows: Sequence[RebalanceWindow],
    env_spec: EnvSpec,
) -> list[WindowSelection]:
    """FinRL's ensemble strategy: per rebalance window, the candidate with the best validation Sharpe.

    Retraining per window happens elsewhere; pass one mapping of pre-trained candidates for every window or
    one mapping per window.

    :param candidates: policies by name, or a list of such mappings aligned with ``windows``
    :param features: features frame or arrays covering every window
    :param windows: consecutive windows, e.g. from :func:`rebalance_windows`
    :param env_spec: engine and settings the candidates trained in
    :return: the choice for each trade window, in order
    """
    per_window = [candidates] * len(windows) if isinstance(candidates, Mapping) else list(candidates)
    if len(per_window) != len(windows):
        raise ValueError(f"{len(per_window)} candidate sets for {len(windows)} windows")
    for previous, current in zip(windows, windows[1:], strict=False):
        if current.trade_start <= previous.trade_end:
            raise ValueError(f"windows must be consecutive without overlapping trades: {previous}, {current}")
    market = as_market(features)  # once; every window is a view of it
    selections = []
    for window, pool in zip(windows, per_window, strict=True):
        chosen, sharpes = select_by_validation_sharpe(pool, window.validation_slice(market), env_spec)
        selections.append(WindowSelection(window=window, chosen=chosen, sharpes=sharpes))
    return selections


def trade_selections(
    selections: Sequence[WindowSelection],
    candidates: Mapping[str, Policy],
    features: pd.DataFrame | MarketArrays,
    env_spec: EnvSpec,
) -> pd.Series:
    """Trade each window with its chosen candidate and chain the windows into one equity curve.

    :param selections: output of :func:`rolling_selection`
    :param candidates: the policies the selections name
    :param features: features frame or arrays covering every trade window
    :param env_spec: engine and settings the candidates trained in
    """
    if not selections:
        raise ValueError("no windows to trade")
    market = as_market(features)  # once; every window is a view of it
    curves = [
        run_backtest(candidates[s.chosen], s.window.trade_slice(market), env_spec).equity for s in selections
    ]
    return stitch(curves, env_spec.initial_amount)


def weighted_ensemble_from_validation(
    members: Mapping[str, Policy],
    validation_features: pd.DataFrame | MarketArrays,
    env_spec: EnvSpec,
    temperature: float = EnsembleConfig.temperature,
) -> WeightedEnsemblePolicy:
    """An ensemble weighted by :func:`softmax_weights` of the members' validation Sharpe ratios.

    :param members: policies by name
    :param validation_features: features frame or arrays of the validation window
    :param env_spec: engine and settings the members trained in
    :param temperature: softmax temperature on the Sharpe ratios
    """
    sharpes = validation_sharpes(members, validation_features, env_spec)
    return WeightedEnsemblePolicy(
        members, softmax_weights(sharpes, temperature), sharpes=sharpes, temperature=temperature
    )
