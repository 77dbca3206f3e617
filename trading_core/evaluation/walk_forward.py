"""Walk-forward evaluation: retrain on each window, trade the next unseen window, stitch the out-of-sample
results into one equity curve.

With a :class:`WarmStartBudget` it also compares the two ways a retraining can start on the same windows and
seeds: from scratch (the walk-forward's own agents) and warm-started, each window's agent fine-tuned from the
previous window's warm-started agent (the first from a given initial agent, else from the first window's scratch
agent, so the first window has no warm-started agent of its own) with a small budget on its latest dates. The
verdict (:func:`start_mode_verdict`) is what the weekly retraining's ``auto`` start mode follows.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from trading_core.agents.training import (
    PPOConfig,
    StartMode,
    WarmStartRefused,
    fine_tune_ppo,
    train_ppo,
)
from trading_core.agents.zoo import TrainedPolicy, load_policy
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
class WarmStartBudget:
    """The warm-started agents of the start-mode comparison.

    :param timesteps: fine-tuning budget of each window's warm-started agent
    :param recent_dates: the latest training dates it fine-tunes on (about a year by default)
    """

    timesteps: int = 2_000
    recent_dates: int = 252

    def __post_init__(self) -> None:
        if self.timesteps < 1:
            raise ValueError(f"warm_start_timesteps must be a positive integer, got {self.timesteps}")
        if self.recent_dates < 2:
            raise ValueError(f"warm_start_dates must be at least 2, got {self.recent_dates}")


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
    :param compare_warm_start: also fine-tune a warm-started agent per window and judge scratch against it
    :param warm_start_timesteps: fine-tuning budget of each warm-started agent
    :param warm_start_dates: the latest training dates each warm-started agent fine-tunes on
    """

    n_windows: int = 3
    test_dates: int = 126
    scheme: Literal["rolling", "expanding"] = "expanding"
    train_dates: int | None = None
    purge: int = 5
    embargo: int = 5
    timesteps_per_window: int = 10_000
    use_ray: bool = True
    compare_warm_start: bool = True
    warm_start_timesteps: int = WarmStartBudget.timesteps
    warm_start_dates: int = WarmStartBudget.recent_dates

    def __post_init__(self) -> None:
        for name in ("n_windows", "test_dates", "timesteps_per_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        WarmStartBudget(self.warm_start_timesteps, self.warm_start_dates)
        if self.purge < 0 or self.embargo < 0:
            raise ValueError(f"purge and embargo must be at least 0, got {self.purge} and {self.embargo}")
        if self.train_dates is not None and self.train_dates < 1:
            raise ValueError(f"train_dates must be positive (or None), got {self.train_dates}")

    def warm_start_budget(self) -> WarmStartBudget | None:
        """The comparison's warm-start budget; ``None`` when the comparison is off."""
        if not self.compare_warm_start:
            return None
        return WarmStartBudget(self.warm_start_timesteps, self.warm_start_dates)

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


def start_mode_verdict(
    scratch_sharpes: Sequence[float], warm_start_sharpes: Sequence[float | None]
) -> tuple[StartMode, str]:
    """``warm_start`` when the median over windows of (warm-started minus scratch out-of-sample Sharpe) is above
    zero; a tie, or no window with both agents, gives ``scratch``: the warm start must earn its place.

    :param scratch_sharpes: out-of-sample Sharpe of each window's scratch agent
    :param warm_start_sharpes: the same windows' warm-started agents; ``None`` where a window has none
    :return: the verdict and the one-line reason
    """
    if len(scratch_sharpes) != len(warm_start_sharpes):
        raise ValueError(
            f"scratch_sharpes has {len(scratch_sharpes)} windows, warm_start_sharpes {len(warm_start_sharpes)}"
        )
    gains = [
        warm - scratch
        for scratch, warm in zip(scratch_sharpes, warm_start_sharpes, strict=True)
        if warm is not None and pd.notna(warm) and pd.notna(scratch)
    ]
    if not gains:
        return "scratch", "no window has both a scratch and a warm-started agent: scratch by default"
    median = statistics.median(gains)
    verdict: StartMode = "warm_start" if median > 0 else "scratch"
    return verdict, (
        f"median out-of-sample Sharpe gain of the warm start over {len(gains)} window"
        f"{'s' if len(gains) != 1 else ''} {median:+.3f} "
        f"({'above' if median > 0 else 'not above'} 0): {verdict}"
    )


@dataclass(frozen=True)
class StartModeComparison:
    """Scratch and warm-started agents on the same windows and seeds, and the verdict between them.

    :param scratch: each window's scratch backtest (the walk-forward's own)
    :param warm_start: each window's warm-started backtest; ``None`` where the window has none
    :param warm_start_sources: what each window's warm-started agent was fine-tuned from, or why it has none
    :param scratch_seconds: training wall time of each scratch agent
    :param warm_start_seconds: fine-tuning wall time of each warm-started agent (0 where none)
    :param scratch_timesteps: budget of a scratch agent
    :param warm_start_timesteps: budget of a warm-started agent
    :param verdict: ``scratch`` or ``warm_start`` (:func:`start_mode_verdict`)
    :param reason: the verdict's one-line reason
    """

    windows: tuple[WalkForwardWindow, ...]
    scratch: tuple[BacktestResult, ...]
    warm_start: tuple[BacktestResult | None, ...]
    warm_start_sources: tuple[str, ...]
    scratch_seconds: tuple[float, ...]
    warm_start_seconds: tuple[float, ...]
    scratch_timesteps: int
    warm_start_timesteps: int
    verdict: StartMode
    reason: str

    def table(self) -> pd.DataFrame:
        """One row per window: both agents' out-of-sample figures and training cost."""
        rows = []
        for number, window in enumerate(self.windows):
            scratch, warm = self.scratch[number], self.warm_start[number]
            rows.append(
                {
                    "test": f"{window.test_start.date()}..{window.test_end.date()}",
                    "scratch_sharpe": scratch.metrics.sharpe,
                    "warm_start_sharpe": None if warm is None else warm.metrics.sharpe,
                    "scratch_return": scratch.metrics.total_return,
                    "warm_start_return": None if warm is None else warm.metrics.total_return,
                    "scratch_seconds": round(self.scratch_seconds[number], 2),
                    "warm_start_seconds": round(self.warm_start_seconds[number], 2),
                    "warm_start_source": self.warm_start_sources[number],
                }
            )
        return pd.DataFrame(rows)

    def metrics(self) -> dict[str, float]:
        """Flat figures for experiment tracking: per-window Sharpes, medians, budgets and wall times."""
        compared = [n for n, warm in enumerate(self.warm_start) if warm is not None]
        figures: dict[str, float] = {
            "scratch_timesteps": float(self.scratch_timesteps),
            "warm_start_timesteps": float(self.warm_start_timesteps),
            "scratch_seconds": float(sum(self.scratch_seconds)),
            "warm_start_seconds": float(sum(self.warm_start_seconds)),
            "compared_windows": float(len(compared)),
        }
        for number in range(len(self.windows)):
            figures[f"window_{number + 1}_scratch_sharpe"] = self.scratch[number].metrics.sharpe
            warm = self.warm_start[number]
            if warm is not None:
                figures[f"window_{number + 1}_warm_start_sharpe"] = warm.metrics.sharpe
        if compared:
            figures["scratch_median_sharpe"] = statistics.median(
                self.scratch[n].metrics.sharpe for n in compared
            )
            figures["warm_start_median_sharpe"] = statistics.median(
                self.warm_start[n].metrics.sharpe for n in compared
            )
        return figures


@dataclass(frozen=True)
class WalkForwardResult:
    """Per-window backtests and the stitched out-of-sample curve (and the start-mode comparison when run)."""

    windows: tuple[WalkForwardWindow, ...]
    results: tuple[BacktestResult, ...]
    equity: pd.Series
    benchmark_equity: pd.Series
    metrics: PerformanceMetrics
    benchmark_metrics: PerformanceMetrics
    comparison: StartModeComparison | None = None

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
    """Training and test data of one walk-forward window.

    :param keep_policy: send the trained agent back (as its saved files) for a warm start to continue from
    """

    train: pd.DataFrame | MarketArrays
    test: pd.DataFrame | MarketArrays
    env_spec: EnvSpec
    ppo_config: PPOConfig
    seed: int
    keep_policy: bool = False


@dataclass(frozen=True)
class WindowOutcome:
    """A window's backtest, its training wall time and, when kept, the agent's saved weights and metadata."""

    result: BacktestResult
    training_seconds: float
    saved_policy: tuple[bytes, bytes] | None = None


def _saved(policy: TrainedPolicy) -> tuple[bytes, bytes]:
    # Saved files, not the live SB3 object, cross the Ray object store (the model holds its environment).
    with tempfile.TemporaryDirectory() as folder:
        weights = policy.save(Path(folder) / "agent")
        return weights.read_bytes(), weights.with_suffix(".json").read_bytes()


def _restored(saved: tuple[bytes, bytes]) -> TrainedPolicy:
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "agent.zip"
        weights.write_bytes(saved[0])
        weights.with_suffix(".json").write_bytes(saved[1])
        return load_policy("ppo", weights)


def train_and_test_window(task: WindowTask) -> WindowOutcome:
    """Train on the window's training dates, backtest on its test dates (module level so Ray can ship it)."""
    with single_torch_thread():
        started = time.perf_counter()
        model = train_ppo(task.train, task.env_spec, task.ppo_config, seed=task.seed)
        seconds = time.perf_counter() - started
        result = run_backtest(model, task.test, task.env_spec)
        return WindowOutcome(result, seconds, _saved(model) if task.keep_policy else None)


def _warm_started_windows(
    tasks: list[WindowTask],
    first_source: TrainedPolicy,
    first_source_name: str,
    budget: WarmStartBudget,
    first_number: int,
    report: Callable[[str], None] | None,
) -> tuple[list[BacktestResult | None], list[str], list[float]]:
    """Each window's agent fine-tuned from the previous window's (a chain, as weekly warm starts run); windows
    are numbered from ``first_number``. A refused warm start ends the chain: later windows have no source."""
    results: list[BacktestResult | None] = []
    sources: list[str] = []
    seconds: list[float] = []
    source: TrainedPolicy | None = first_source
    source_name = first_source_name
    for number, task in enumerate(tasks, start=first_number):
        if source is None:
            results.append(None)
            sources.append(source_name)
            seconds.append(0.0)
            continue
        with single_torch_thread():
            started = time.perf_counter()
            try:
                tuned = fine_tune_ppo(
                    source,
                    task.train,
                    task.env_spec,
                    task.ppo_config,
                    timesteps=budget.timesteps,
                    seed=task.seed,
                    recent_dates=budget.recent_dates,
                    report=report,
                )
            except WarmStartRefused as refusal:
                results.append(None)
                sources.append(f"{source_name}: {refusal}")
                seconds.append(0.0)
                source, source_name = None, f"no source: the warm start of window {number} was refused"
                continue
            seconds.append(time.perf_counter() - started)
            results.append(run_backtest(tuned, task.test, task.env_spec))
        sources.append(source_name)
        source, source_name = tuned, f"window {number} warm start"
    return results, sources, seconds


def run_walk_forward(
    features: pd.DataFrame | MarketArrays,
    windows: list[WalkForwardWindow],
    env_spec: EnvSpec,
    ppo_config: PPOConfig,
    seed: int,
    report: Callable[[str], None] | None = None,
    use_ray: bool = False,
    warm_start: WarmStartBudget | None = None,
    initial_policy: TrainedPolicy | None = None,
    initial_policy_name: str = "initial policy",
) -> WalkForwardResult:
    """Train a fresh agent per window on its training dates and backtest it on its test dates.

    :param use_ray: train the windows as parallel Ray tasks (same results as in turn)
    :param warm_start: also run the start-mode comparison with this budget (see the module docstring); the
        warm-started agents train in turn here, after the scratch ones
    :param initial_policy: the agent the first window's warm start continues from; it must have trained on
        dates before the first test window only (a champion trained later has seen the test dates). ``None``:
        the first window's scratch agent seeds the chain
    :param initial_policy_name: how the comparison names ``initial_policy``
    """
    # Converted once: every window is a view on the same universe (a ticker listing or delisting between
    # windows keeps its column, never tradable where it has no rows), so each agent trades what it trained on.
    market = as_market(features)
    seeds_chain = warm_start is not None and initial_policy is None
    tasks = []
    for number, window in enumerate(windows, start=1):
        train = market.between(window.train_start, window.train_end)
        test = market.between(window.test_start, window.test_end)
        keep = seeds_chain and number == 1
        tasks.append(WindowTask(train, test, env_spec, ppo_config, seed + number, keep_policy=keep))
    if report:
        report(f"walk-forward: {len(tasks)} windows {'on Ray' if use_ray else 'in turn'}")
    outcomes = fan_out(train_and_test_window, tasks, use_ray=use_ray)
    results = [outcome.result for outcome in outcomes]
    comparison = None
    if warm_start is not None:
        comparison = _compare_start_modes(
            windows, tasks, outcomes, ppo_config, warm_start, initial_policy, initial_policy_name, report
        )
    equity = stitch([r.equity for r in results], env_spec.initial_amount)
    benchmark = stitch([r.benchmark_equity for r in results], env_spec.initial_amount)
    return WalkForwardResult(
        windows=tuple(windows),
        results=tuple(results),
        equity=equity,
        benchmark_equity=benchmark,
        metrics=compute_metrics(equity),
        benchmark_metrics=compute_metrics(benchmark),
        comparison=comparison,
    )


def _compare_start_modes(
    windows: list[WalkForwardWindow],
    tasks: list[WindowTask],
    outcomes: list[WindowOutcome],
    ppo_config: PPOConfig,
    budget: WarmStartBudget,
    initial_policy: TrainedPolicy | None,
    initial_policy_name: str,
    report: Callable[[str], None] | None,
) -> StartModeComparison:
    if initial_policy is not None:
        first_source, first_name, first_number = initial_policy, initial_policy_name, 1
    else:
        # The first window's scratch agent seeds the chain: the first window has no warm start of its own.
        first_source, first_name, first_number = _restored(outcomes[0].saved_policy), "window 1 scratch", 2
    chained = tasks[first_number - 1 :]
    if report:
        report(f"walk-forward: warm starts of {budget.timesteps} timesteps on {len(chained)} windows")
    warm, sources, seconds = _warm_started_windows(
        chained, first_source, first_name, budget, first_number, report
    )
    if initial_policy is None:
        warm, sources, seconds = [None, *warm], ["no source: first window", *sources], [0.0, *seconds]
    scratch = tuple(outcome.result for outcome in outcomes)
    verdict, reason = start_mode_verdict(
        [r.metrics.sharpe for r in scratch], [None if w is None else w.metrics.sharpe for w in warm]
    )
    return StartModeComparison(
        windows=tuple(windows),
        scratch=scratch,
        warm_start=tuple(warm),
        warm_start_sources=tuple(sources),
        scratch_seconds=tuple(outcome.training_seconds for outcome in outcomes),
        warm_start_seconds=tuple(seconds),
        scratch_timesteps=ppo_config.total_timesteps,
        warm_start_timesteps=budget.timesteps,
        verdict=verdict,
        reason=reason,
    )
