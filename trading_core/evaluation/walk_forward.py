"""Walk-forward evaluation: retrain on each window, trade the next unseen window, stitch the out-of-sample
results into one equity curve."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from trading_core.agents.training import PPOConfig, train_ppo
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtester import BacktestResult, run_backtest
from trading_core.evaluation.metrics import PerformanceMetrics, compute_metrics
from trading_core.market.arrays import MarketArrays, as_market
from trading_core.runtime.distributed import fan_out, single_torch_thread


@dataclass(frozen=True)
class WalkForwardWindow:
    """Inclusive date bounds of one training window and the test window that follows it."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp


@dataclass(frozen=True)
class WalkForwardConfig:
    """Windows of the walk-forward evaluation and the training budget per window.

    :param n_windows: number of test windows
    :param test_dates: dates per test window
    :param scheme: ``expanding`` (training from the first date) or ``rolling`` (``train_dates`` long)
    :param train_dates: dates per training window (``rolling``), the minimum for the first one (``expanding``);
        ``None``: every date before the first test window's gap
    :param purge: dates dropped before each test window
    :param embargo: further dates dropped before each test window
    :param timesteps_per_window: PPO budget of each window's agent
    :param use_ray: train the windows as parallel Ray tasks
    """

    n_windows: int = 3
    test_dates: int = 126
    scheme: Literal["rolling", "expanding"] = "expanding"
    train_dates: int | None = None
    purge: int = 5
    embargo: int = 5
    timesteps_per_window: int = 10_000
    use_ray: bool = True

    def __post_init__(self) -> None:
        for name in ("n_windows", "test_dates", "timesteps_per_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.purge < 0 or self.embargo < 0:
            raise ValueError(f"purge and embargo must be at least 0, got {self.purge} and {self.embargo}")
        if self.train_dates is not None and self.train_dates < 1:
            raise ValueError(f"train_dates must be positive (or None), got {self.train_dates}")

    def windows(self, dates: pd.Series | pd.DatetimeIndex) -> list[WalkForwardWindow]:
        """The windows over ``dates`` (see :func:`walk_forward_windows`)."""
        return walk_forward_windows(
            dates,
            n_windows=self.n_windows,
            test_size=self.test_dates,
            train_size=self.train_dates,
            scheme=self.scheme,
            purge=self.purge,
            embargo=self.embargo,
        )


def walk_forward_windows(
    dates: pd.Series | pd.DatetimeIndex,
    n_windows: int,
    test_size: int,
    train_size: int | None = None,
    scheme: Literal["rolling", "expanding"] = WalkForwardConfig.scheme,
    purge: int = WalkForwardConfig.purge,
    embargo: int = WalkForwardConfig.embargo,
) -> list[WalkForwardWindow]:
    """Consecutive test windows at the end of the dates, each preceded by its training window and a gap.

    The gap of ``purge + embargo`` dates between a training window's last date and its test window's first
    date keeps indicator windows and serially correlated returns of the test period out of training.

    :param dates: dates of the feature panel
    :param n_windows: number of test windows
    :param test_size: dates per test window
    :param train_size: dates per training window (``rolling``); the minimum for the first one (``expanding``)
    :param scheme: ``rolling`` (fixed-length training window) or ``expanding`` (from the first date)
    :param purge: dates dropped before each test window
    :param embargo: further dates dropped before each test window
    """
    unique = pd.DatetimeIndex(pd.Series(dates).drop_duplicates().sort_values())
    gap = purge + embargo
    first_test = len(unique) - n_windows * test_size
    train_size = train_size or max(first_test - gap, 1)
    if first_test - gap < train_size or min(n_windows, test_size) < 1:
        raise ValueError(
            f"{len(unique)} dates cannot hold {n_windows} test windows of {test_size} dates after "
            f"{train_size} training dates and a gap of {gap}"
        )
    windows = []
    for index in range(n_windows):
        test_start = first_test + index * test_size
        train_end = test_start - gap - 1
        train_start = 0 if scheme == "expanding" else train_end - train_size + 1
        windows.append(
            WalkForwardWindow(
                train_start=unique[train_start],
                train_end=unique[train_end],
                test_start=unique[test_start],
                test_end=unique[test_start + test_size - 1],
            )
        )
    return windows


@dataclass(frozen=True)
class WalkForwardResult:
    """Per-window backtests and the stitched out-of-sample curve."""

    windows: tuple[WalkForwardWindow, ...]
    results: tuple[BacktestResult, ...]
    equity: pd.Series
    benchmark_equity: pd.Series
    metrics: PerformanceMetrics
    benchmark_metrics: PerformanceMetrics

    def table(self) -> pd.DataFrame:
        rows = []
        for window, result in zip(self.windows, self.results, strict=True):
            rows.append(
                {
                    "train": f"{window.train_start.date()}..{window.train_end.date()}",
                    "test": f"{window.test_start.date()}..{window.test_end.date()}",
                    "return": result.metrics.total_return,
                    "sharpe": result.metrics.sharpe,
                    "max_drawdown": result.metrics.max_drawdown,
                    "buy_and_hold_return": result.benchmark_metrics.total_return,
                    "costs": result.total_cost,
                }
            )
        return pd.DataFrame(rows)


def stitch(curves: list[pd.Series], initial: float) -> pd.Series:
    """Chain the returns of consecutive equity curves into one curve starting at ``initial``."""
    returns = pd.concat([curve.pct_change().dropna() for curve in curves])
    start = curves[0].index[0]
    stitched = initial * (1.0 + returns).cumprod()
    return pd.concat([pd.Series([initial], index=[start]), stitched]).rename(curves[0].name)


@dataclass(frozen=True)
class WindowTask:
    """Training and test data of one walk-forward window."""

    train: pd.DataFrame | MarketArrays
    test: pd.DataFrame | MarketArrays
    env_spec: EnvSpec
    ppo_config: PPOConfig
    seed: int


def train_and_test_window(task: WindowTask) -> BacktestResult:
    """Train on the window's training dates, backtest on its test dates (module level so Ray can ship it)."""
    with single_torch_thread():
        model = train_ppo(task.train, task.env_spec, task.ppo_config, seed=task.seed)
        return run_backtest(model, task.test, task.env_spec)


def run_walk_forward(
    features: pd.DataFrame | MarketArrays,
    windows: list[WalkForwardWindow],
    env_spec: EnvSpec,
    ppo_config: PPOConfig,
    seed: int,
    report: Callable[[str], None] | None = None,
    use_ray: bool = False,
) -> WalkForwardResult:
    """Train a fresh agent per window on its training dates and backtest it on its test dates.

    :param use_ray: train the windows as parallel Ray tasks (same results as in turn)
    """
    # Converted once: every window is a view on the same universe (a ticker listing or delisting between
    # windows keeps its column, never tradable where it has no rows), so each agent trades what it trained on.
    market = as_market(features)
    tasks = []
    for number, window in enumerate(windows, start=1):
        train = market.between(window.train_start, window.train_end)
        test = market.between(window.test_start, window.test_end)
        tasks.append(WindowTask(train, test, env_spec, ppo_config, seed + number))
    if report:
        report(f"walk-forward: {len(tasks)} windows {'on Ray' if use_ray else 'in turn'}")
    results = fan_out(train_and_test_window, tasks, use_ray=use_ray)
    equity = stitch([r.equity for r in results], env_spec.initial_amount)
    benchmark = stitch([r.benchmark_equity for r in results], env_spec.initial_amount)
    return WalkForwardResult(
        windows=tuple(windows),
        results=tuple(results),
        equity=equity,
        benchmark_equity=benchmark,
        metrics=compute_metrics(equity),
        benchmark_metrics=compute_metrics(benchmark),
    )
