"""Executors compared on real intraday bars: the slow allocator's daily targets, each executor's own book, and
the measures of every parent order aggregated per executor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from trading_core.hierarchy.executors import Executor, default_executors
from trading_core.hierarchy.session_loop import ExecutionRun, HierarchyConfig, execute_sessions
from trading_core.hierarchy.sessions import intraday_sessions
from trading_core.hierarchy.shortfall import parent_measures, summarise
from trading_core.hierarchy.targets import daily_market, daily_targets, in_intraday_units, split_factors


@dataclass(frozen=True)
class ExecutionComparison:
    """The comparison on one intraday file.

    :param label: what the bars are (the file name)
    :param bar_length: the intraday bar length
    :param run: every parent and child order
    :param measured: the parents with their measures (:func:`~trading_core.hierarchy.shortfall.parent_measures`)
    :param summary: one row per executor (:func:`~trading_core.hierarchy.shortfall.summarise`)
    """

    label: str
    bar_length: pd.Timedelta
    tickers: tuple[str, ...]
    dates: pd.DatetimeIndex
    run: ExecutionRun
    measured: pd.DataFrame
    summary: pd.DataFrame


def common_tickers(intraday_bars: pd.DataFrame, daily_bars: pd.DataFrame) -> tuple[str, ...]:
    """The tickers with both intraday and daily bars, sorted.

    :raises ValueError: there are none
    """
    common = sorted(set(intraday_bars["tic"]) & set(daily_bars["tic"]))
    if not common:
        raise ValueError("intraday_bars and daily_bars share no ticker")
    return tuple(common)


def compare_executors(
    intraday_bars: pd.DataFrame,
    daily_bars: pd.DataFrame,
    config: HierarchyConfig | None = None,
    executors: Sequence[Executor] | None = None,
    tickers: Sequence[str] | None = None,
    label: str = "intraday",
) -> ExecutionComparison:
    """Compare executors on intraday bars, the slow layer fitted on the daily bars before each session.

    :param intraday_bars: UTC bar-end ``timestamp``, ``tic``, OHLCV (:func:`~trading_core.live.sources.read_bars`)
    :param daily_bars: daily bars with ``date`` as datetimes, not dividend-adjusted (like the intraday bars);
        prices split-adjusted for later splits are put into the intraday bars' units (:func:`split_factors`)
    :param config: book, allocator, costs and fill rules (default :class:`HierarchyConfig`)
    :param executors: the executors (default :func:`default_executors`)
    :param tickers: the universe (default: every ticker of both frames)
    :param label: what the intraday bars are
    """
    config = HierarchyConfig() if config is None else config
    executors = default_executors() if executors is None else tuple(executors)
    universe = common_tickers(intraday_bars, daily_bars) if tickers is None else tuple(tickers)
    sessions = intraday_sessions(intraday_bars, universe)
    daily = in_intraday_units(daily_bars, universe, split_factors(daily_bars, sessions))
    targets = daily_targets(
        daily_market(daily, universe), sessions.dates, config.allocator, config.simulation
    )
    run = execute_sessions(sessions, targets, executors, config)
    measured = parent_measures(run.parents)
    return ExecutionComparison(
        label, sessions.bar_length, universe, sessions.dates, run, measured, summarise(measured)
    )


def read_daily_bars(path: str | Path) -> pd.DataFrame:
    """Unadjusted daily bars of a long-format file, ``date`` as datetimes (the intraday files are unadjusted)."""
    from trading_core.data.files import read_bars_file
    from trading_core.data.validation import to_validated_bars

    return to_validated_bars(read_bars_file(path, use_adjusted_close=False))


def compare_files(
    intraday_file: str | Path,
    daily_file: str | Path,
    config: HierarchyConfig | None = None,
    executors: Sequence[Executor] | None = None,
    *,
    validate: bool = True,
) -> ExecutionComparison:
    """:func:`compare_executors` on an intraday file and a daily file.

    :param validate: run the project's validation rules on the intraday file first
    """
    from trading_core.live.sources import read_bars

    intraday = read_bars(intraday_file, validate=validate)
    daily = read_daily_bars(daily_file)
    # Only the daily history up to the last session is ever read; cutting it here keeps the fits' panel small.
    daily = daily[
        daily["date"]
        <= intraday["timestamp"].max().tz_convert("America/New_York").tz_localize(None).normalize()
    ]
    return compare_executors(intraday, daily, config, executors, label=Path(intraday_file).name)


def bar_label(bar_length: pd.Timedelta) -> str:
    """A bar length as the files name it: ``1min``, ``15min``, ``1d``."""
    minutes = bar_length / pd.Timedelta(minutes=1)
    if minutes % (24 * 60) == 0:
        return f"{int(minutes // (24 * 60))}d"
    return f"{int(minutes)}min" if minutes == int(minutes) else str(bar_length)


def comparison_table(comparisons: Sequence[ExecutionComparison]) -> pd.DataFrame:
    """The summaries of several comparisons, one row per (file, executor)."""
    frames = [c.summary.assign(bars=c.label, bar_length=bar_label(c.bar_length)) for c in comparisons]
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    return table[["bars", "bar_length", *[c for c in table.columns if c not in ("bars", "bar_length")]]]


__all__ = [
    "ExecutionComparison",
    "bar_label",
    "common_tickers",
    "compare_executors",
    "compare_files",
    "comparison_table",
    "read_daily_bars",
]
