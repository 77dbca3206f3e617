"""A sizing layer over any candidate: its decision function re-sized by a :class:`SizingConfig` mode, and the
candidate backtested unsized and under each mode side by side, for the leaderboard.

The overlay sits where a policy sits, before the risk manager, which reviews every sized target as it reviews
any other. At the close of bar ``t`` it turns the candidate's target shares into weights of equity (its signal),
re-sizes them on the trailing close-to-close returns up to and including bar ``t`` (never a later bar) and turns
them back into shares: whole shares, rounded toward zero, when the simulation trades whole shares.

Rules, per portfolio:

- Rebalance only when the candidate trades: where its targets equal the current holdings (it holds, as an
  allocator between rebalance dates or buy-and-hold after its purchase) the overlay holds too, so it adds no
  turnover where the candidate held.
- An asset is sized when it is held, priced and tradable at the close and its trailing window holds
  ``lookback`` returns with a positive variance. Any other asset (warm-up, a late listing, a suspension) keeps the
  candidate's target shares, and the mode sizes the rest within the gross exposure they leave. Before the
  history holds ``lookback`` returns the candidate's targets therefore pass through unchanged.
- The trailing returns come from ``history``: the full panel the backtest period is cut from, so a test period
  is sized from its first date on (as :func:`~trading_core.evaluation.allocator_backtests.backtest_allocators`
  fits on the history before the period). Rows after the decision's close are never read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from trading_core.allocators.config import AllocatorConfig
from trading_core.allocators.schedule import AllocationSchedule, allocation_schedule, returns_panel
from trading_core.evaluation.allocator_backtests import allocator_targets
from trading_core.evaluation.backtester import BacktestRecord, Decide, EventDrivenBacktester
from trading_core.evaluation.leaderboard import CandidateRun, PeriodFigures
from trading_core.market.arrays import MarketArrays, as_market
from trading_core.market.simulator import PortfolioSimulator, SimulationConfig
from trading_core.market.sizing import SIZING_MODES, SizingConfig, size_weights

# The leaderboard kind of a candidate under a sizing mode (named ``<candidate>+<mode>``).
SIZED_KIND = "sized"
UNSIZED = "none"


def sized_name(candidate: str, mode: str) -> str:
    """The leaderboard name of ``candidate`` under sizing ``mode`` (``risk_parity+volatility_target``)."""
    return f"{candidate}+{mode}"


def every_sizing(base: SizingConfig | None = None) -> tuple[SizingConfig, ...]:
    """One config per sizing mode other than ``none``, each with the settings of ``base`` (default
    :class:`SizingConfig`)."""
    base = base if base is not None else SizingConfig()
    return tuple(replace(base, mode=mode) for mode in SIZING_MODES if mode != UNSIZED)


class _TrailingReturns:
    """Close-to-close returns of the sizing history and where they are usable, aligned to one backtest period.

    Row ``g`` of the history is the return from close ``g - 1`` to close ``g``; it is usable when the asset is
    priced and tradable on both dates. Built once per period; a window ending at a decision's close reads rows up
    to that close only.
    """

    def __init__(self, history: MarketArrays, period: MarketArrays) -> None:
        if tuple(history.tickers) != tuple(period.tickers):
            raise ValueError(
                f"sizing history tickers {list(history.tickers)} differ from the period's {list(period.tickers)}"
            )
        offset = int(history.dates.searchsorted(period.dates[0]))
        overlap = min(history.n_steps - offset, period.n_steps)
        if overlap < 1 or not history.dates[offset : offset + overlap].equals(period.dates[:overlap]):
            raise ValueError(
                f"sizing history must hold the period's dates from {period.dates[0].date()} on, in order"
            )
        panel = returns_panel(history)
        self.returns, self.valid, self.offset, self.n_rows = (
            panel.returns,
            panel.valid,
            offset,
            history.n_steps,
        )
        self._cache: tuple[int, int, np.ndarray, np.ndarray] | None = None

    def window(self, day: int, lookback: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``[lookback, N]`` ending at the close of period bar ``day`` and which assets have all of them
        (none while the history holds fewer than ``lookback`` returns)."""
        end = self.offset + day
        if end >= self.n_rows:
            raise ValueError(f"sizing history ends before the period's bar {day}")
        if self._cache is not None and self._cache[:2] == (end, lookback):
            return self._cache[2], self._cache[3]
        first = end - lookback + 1
        if first < 1:
            window = np.zeros((lookback, self.returns.shape[1]))
            full = np.zeros(self.returns.shape[1], dtype=bool)
        else:
            window = self.returns[first : end + 1]
            full = self.valid[first : end + 1].all(axis=0)
        self._cache = (end, lookback, window, full)
        return window, full


def _sized_row(
    target: np.ndarray,
    equity: float,
    prices: np.ndarray,
    tradable: np.ndarray,
    window: np.ndarray,
    full: np.ndarray,
    config: SizingConfig,
    whole_shares: bool,
) -> np.ndarray:
    """One portfolio's target shares ``[N]`` re-sized by ``config`` (see the module's rules)."""
    priced = np.isfinite(prices) & (prices > 0.0)
    if not equity > 0.0 or not priced.any():
        return target
    weights = np.where(priced, target * np.where(priced, prices, 0.0) / equity, 0.0)
    sizable = (target != 0.0) & priced & tradable & full
    sizable[sizable] = window[:, sizable].var(axis=0, ddof=1) > 0.0
    if not sizable.any():
        return target
    kept_gross = float(np.abs(weights[~sizable]).sum())
    sized = size_weights(
        weights[sizable], window[:, sizable], config, max_gross=max(config.max_leverage - kept_gross, 0.0)
    )
    shares = target.astype(np.float64, copy=True)
    shares[sizable] = sized * equity / prices[sizable]
    if whole_shares:
        shares[sizable] = np.trunc(shares[sizable])
    return shares


def sized_batch_targets(
    inner: Decide, configs: Sequence[SizingConfig], history: MarketArrays | None = None
) -> Decide:
    """The decision function of ``inner`` with portfolio ``b`` of the batch re-sized by ``configs[b]``.

    :param inner: the candidate's decision function; it must decide for every portfolio of the batch (as
        :func:`~trading_core.evaluation.allocator_backtests.allocator_targets` and
        :func:`~trading_core.evaluation.backtester.buy_and_hold_targets` do; for a policy, pass
        ``backtester.policy_targets([policy] * len(configs))``)
    :param configs: one sizing per portfolio (``mode="none"``: the candidate's targets exactly)
    :param history: the full panel the backtest period is cut from (its dates must run through the period's
        first ones); ``None``: the period's own bars, so each period starts in warm-up
    """
    configs = tuple(configs)
    if not configs:
        raise ValueError("configs must hold at least one SizingConfig")
    if any(not isinstance(config, SizingConfig) for config in configs):
        raise ValueError("configs must be SizingConfig instances")
    if all(config.mode == UNSIZED for config in configs):
        return inner
    bound: dict[str, object] = {}

    def trailing(period: MarketArrays) -> _TrailingReturns:
        # Bound to the first period it decides on; a new period (another backtest) rebinds.
        if bound.get("period") is not period:
            bound["period"] = period
            bound["returns"] = _TrailingReturns(history if history is not None else period, period)
        return bound["returns"]  # type: ignore[return-value]

    def decide(day: int, simulator: PortfolioSimulator) -> np.ndarray:
        raw = np.asarray(inner(day, simulator))
        if raw.shape != simulator.holdings.shape or raw.shape[0] != len(configs):
            raise ValueError(
                f"the candidate's targets are {raw.shape}, the batch holds {len(configs)} sized portfolios "
                f"of {simulator.market.n_assets} assets"
            )
        returns = trailing(simulator.market)
        equity, prices = simulator.equity(), simulator.prices
        tradable = np.asarray(simulator.market.tradable[day], dtype=bool)
        whole_shares = simulator.config.execution.whole_shares
        sized = raw
        for row, config in enumerate(configs):
            if config.mode == UNSIZED or np.array_equal(raw[row], simulator.holdings[row]):
                continue  # the candidate holds: so does the overlay
            window, full = returns.window(day, config.lookback)
            resized = _sized_row(
                raw[row], float(equity[row]), prices, tradable, window, full, config, whole_shares
            )
            if sized is raw:
                sized = raw.astype(np.float64, copy=True)
            sized[row] = resized
        return sized

    return decide


def sized_targets(inner: Decide, config: SizingConfig, history: MarketArrays | None = None) -> Decide:
    """The decision function of ``inner`` with every target re-sized by ``config`` (single-portfolio backtests
    and batches alike); ``mode="none"`` returns ``inner`` itself. See :func:`sized_batch_targets`."""
    if not isinstance(config, SizingConfig):
        raise ValueError(f"config must be a SizingConfig, got {type(config).__name__}")
    if config.mode == UNSIZED:
        return inner
    sized: dict[int, Decide] = {}

    def decide(day: int, simulator: PortfolioSimulator) -> np.ndarray:
        batch = simulator.n_envs
        if batch not in sized:
            sized[batch] = sized_batch_targets(inner, (config,) * batch, history)
        return sized[batch](day, simulator)

    return decide


def _mode_names(configs: Sequence[SizingConfig]) -> tuple[str, ...]:
    names = tuple(config.mode for config in configs)
    if UNSIZED in names:
        raise ValueError("configs must not hold mode 'none': the unsized candidate always runs first")
    if len(set(names)) != len(names):
        raise ValueError(f"configs must hold each sizing mode once, got {list(names)}")
    return names


def backtest_sized(
    inner: Decide,
    period: pd.DataFrame | MarketArrays,
    simulation: SimulationConfig,
    configs: Sequence[SizingConfig] | None = None,
    history: MarketArrays | None = None,
) -> dict[str, BacktestRecord]:
    """Backtest a candidate unsized and under each sizing, as one batch of ``1 + len(configs)`` portfolios.

    :param inner: the candidate's decision function for a batch of that size (see :func:`sized_batch_targets`)
    :param period: the backtest period
    :param simulation: costs, fills and risk manager (the same for every portfolio)
    :param configs: the sizings, one per mode other than ``none`` (default :func:`every_sizing`)
    :param history: the full panel the period is cut from (see :func:`sized_batch_targets`)
    :return: record per mode, ``"none"`` (the unsized candidate) first
    """
    configs = every_sizing() if configs is None else tuple(configs)
    names = _mode_names(configs)
    batch = (SizingConfig(mode=UNSIZED), *configs)
    backtester = EventDrivenBacktester(period, simulation)
    records = backtester.run_batch(sized_batch_targets(inner, batch, history), len(batch))
    return dict(zip((UNSIZED, *names), records, strict=True))


def backtest_sized_allocator(
    market: pd.DataFrame | MarketArrays,
    start: pd.Timestamp | str,
    end: pd.Timestamp | str,
    simulation: SimulationConfig,
    allocator: AllocatorConfig,
    configs: Sequence[SizingConfig] | None = None,
    schedule: AllocationSchedule | None = None,
) -> dict[str, BacktestRecord]:
    """:func:`backtest_sized` for one classical allocator on the dates ``start`` to ``end`` of the full panel
    ``market``: fits and sizing windows read the history before ``start``, never a bar after their own close.
    The ``"none"`` record is the allocator's own backtest
    (:func:`~trading_core.evaluation.allocator_backtests.backtest_allocator`).

    :param schedule: the allocator's weights on these dates when already fitted (an
        :class:`~trading_core.evaluation.allocator_backtests.AllocatorBacktest`'s), so they are not refitted
    """
    market = as_market(market)
    history = market.between(market.dates[0], end)
    period = history.between(start, end)
    if schedule is None:
        schedule = allocation_schedule(history, allocator, start=start)
    elif not schedule.dates.equals(period.dates):
        raise ValueError(f"schedule dates do not match the period {period.dates[0].date()}..{end}")
    inner = allocator_targets(schedule.weights, allocator)
    return backtest_sized(inner, period, simulation, configs, history)


def sized_candidate_runs(
    candidate: str,
    validation: Mapping[str, BacktestRecord],
    test: Mapping[str, BacktestRecord],
) -> tuple[CandidateRun, ...]:
    """The leaderboard runs of a candidate's sized variants (kind :data:`SIZED_KIND`, named by
    :func:`sized_name`); the unsized candidate is on the board under its own kind already.

    :param validation: records per mode on validation, as :func:`backtest_sized` returns them
    :param test: the same on test
    """
    if set(validation) != set(test):
        raise ValueError(f"validation has modes {sorted(validation)}, test {sorted(test)}")
    return tuple(
        CandidateRun(
            sized_name(candidate, mode),
            SIZED_KIND,
            None,
            PeriodFigures.of_record(validation[mode]),
            PeriodFigures.of_record(test[mode]),
        )
        for mode in validation
        if mode != UNSIZED
    )


@dataclass(frozen=True)
class SizedCandidates:
    """Every sized variant as a leaderboard run, and per candidate the comparison with its unsized self."""

    runs: tuple[CandidateRun, ...]
    comparison: pd.DataFrame

    def best_lines(self) -> list[str]:
        """Per candidate: its best sizing on test against the unsized candidate (for the run summary)."""
        lines = []
        for candidate, rows in self.comparison.groupby("candidate", sort=False):
            unsized = rows.iloc[0]
            best = (
                rows.iloc[1:].sort_values("test_sharpe", ascending=False).iloc[0]
                if len(rows) > 1
                else unsized
            )
            lines.append(
                f"{candidate}: best {best['mode']} test Sharpe {best['test_sharpe']:.2f} vs unsized "
                f"{unsized['test_sharpe']:.2f}"
            )
        return lines


SIZING_FIGURES = ("sharpe", "total_return", "max_drawdown", "turnover", "cost_drag", "days_halted")


def sizing_comparison(
    candidate: str,
    validation: Mapping[str, BacktestRecord],
    test: Mapping[str, BacktestRecord],
) -> pd.DataFrame:
    """One row per mode (``none`` first): each figure of :data:`SIZING_FIGURES` on validation and test after
    costs, and the test Sharpe's change against the unsized candidate."""
    if UNSIZED not in validation or UNSIZED not in test:
        raise ValueError("the comparison needs the unsized ('none') record of both periods")
    rows = []
    for mode in dict.fromkeys([UNSIZED, *validation]):
        figures = {
            period: PeriodFigures.of_record(records[mode])
            for period, records in (("validation", validation), ("test", test))
        }
        row: dict[str, object] = {"candidate": candidate, "mode": mode}
        for period, value in figures.items():
            row |= {f"{period}_{name}": float(getattr(value, name)) for name in SIZING_FIGURES}
        rows.append(row)
    table = pd.DataFrame(rows)
    for period in ("validation", "test"):
        column = f"{period}_sharpe"
        table[f"{period}_sharpe_vs_unsized"] = table[column] - table.loc[0, column]
    return table


__all__ = [
    "SIZED_KIND",
    "SizedCandidates",
    "SIZING_FIGURES",
    "UNSIZED",
    "backtest_sized",
    "backtest_sized_allocator",
    "every_sizing",
    "sized_batch_targets",
    "sized_candidate_runs",
    "sized_name",
    "sized_targets",
    "sizing_comparison",
]
