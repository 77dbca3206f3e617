"""Seed variance as a first-class result: the same training recipe under several seeds, each evaluated out of
sample, and the distribution of every metric across seeds."""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path

import pandas as pd

from trading_core.agents.tilt import TILT_CANDIDATES
from trading_core.agents.zoo import (
    ALGORITHMS,
    DEFAULT_CONFIGS,
    AgentConfig,
    TrainedPolicy,
    load_policy,
    train_agent,
)
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtester import run_backtest
from trading_core.evaluation.leaderboard import CandidateRun, PeriodFigures
from trading_core.evaluation.metrics import daily_returns
from trading_core.evaluation.metrics import per_period_sharpe_variance as sharpe_variance
from trading_core.evaluation.promotion import CandidateThresholds
from trading_core.evaluation.walk_forward import WalkForwardConfig
from trading_core.market.arrays import MarketArrays, as_market
from trading_core.runtime.distributed import fan_out, single_torch_thread


@dataclass(frozen=True)
class SeedSweepConfig:
    """The registered candidate's recipe retrained under several seeds, and the gate on the distribution.

    :param n_seeds: seeds, counted up from the candidate's own seed (which is the first)
    :param timesteps: training budget of each run; ``None``: the candidate's own budget
    :param use_ray: train the seeds as parallel Ray tasks
    :param min_p25_sharpe: lowest acceptable 25th percentile over seeds of the out-of-sample Sharpe
    :param min_deflated_sharpe: lowest acceptable deflated Sharpe ratio of the candidate's own seed
    :param must_beat_yardsticks: require the 25th percentile over seeds of the test Sharpe above equal-weight
        buy-and-hold and above the classical allocator validation picked from the leaderboard
    """

    n_seeds: int = 3
    timesteps: int | None = None
    use_ray: bool = True
    min_p25_sharpe: float = CandidateThresholds.min_p25_sharpe
    min_deflated_sharpe: float = CandidateThresholds.min_deflated_sharpe
    must_beat_yardsticks: bool = True

    def __post_init__(self) -> None:
        if self.n_seeds < 1:
            raise ValueError(f"n_seeds must be at least 1, got {self.n_seeds}")
        if self.timesteps is not None and self.timesteps <= 0:
            raise ValueError(
                f"timesteps must be positive (or None for the candidate's own), got {self.timesteps}"
            )

    def seeds(self, candidate_seed: int) -> list[int]:
        return [candidate_seed + offset for offset in range(self.n_seeds)]


@dataclass(frozen=True)
class ZooConfig:
    """Which agents, seeds and windows the agent zoo trains, and each run's budget.

    :param algorithms: agents of :data:`~trading_core.agents.zoo.ALGORITHMS`, each with its default recipe
    :param tilts: agents over an allocator of :data:`~trading_core.agents.tilt.TILT_CANDIDATES`, each with its
        algorithm's default recipe, trained on the same seeds, windows and budget
    :param n_seeds: seeds per agent and window
    :param first_seed: the first of the consecutive seeds
    :param timesteps: training budget of every run
    :param walk_forward_windows: walk-forward windows trained besides the split; 0 for the split only
    :param window_test_dates: dates per walk-forward test window (the walk-forward evaluation's by default)
    :param use_ray: train the runs as parallel Ray tasks
    """

    algorithms: tuple[str, ...] = ALGORITHMS
    tilts: tuple[str, ...] = tuple(TILT_CANDIDATES)
    n_seeds: int = 2
    first_seed: int = 100
    timesteps: int = 4_000
    walk_forward_windows: int = 0
    window_test_dates: int = WalkForwardConfig.test_dates
    use_ray: bool = True

    def __post_init__(self) -> None:
        if self.n_seeds < 1:
            raise ValueError(f"n_seeds must be at least 1, got {self.n_seeds}")
        if self.first_seed < 0:
            raise ValueError(f"first_seed must be at least 0, got {self.first_seed}")
        if self.timesteps <= 0:
            raise ValueError(f"timesteps must be positive, got {self.timesteps}")
        if self.walk_forward_windows < 0 or self.window_test_dates < 1:
            raise ValueError(
                f"walk_forward_windows must be at least 0 and window_test_dates at least 1, got "
                f"{self.walk_forward_windows} and {self.window_test_dates}"
            )
        unknown = [name for name in self.tilts if name not in TILT_CANDIDATES]
        if unknown:
            raise ValueError(f"unknown tilt candidates {unknown}; choose from {', '.join(TILT_CANDIDATES)}")

    def seeds(self) -> range:
        return range(self.first_seed, self.first_seed + self.n_seeds)

    def configs(self) -> dict[str, AgentConfig]:
        """Each agent's default recipe at this budget."""
        return {a: replace(DEFAULT_CONFIGS[a], total_timesteps=self.timesteps) for a in self.algorithms}

    def tilt_configs(self) -> dict[str, AgentConfig]:
        """Each tilt candidate's recipe at this budget, by candidate name."""
        return {name: TILT_CANDIDATES[name].config(self.timesteps) for name in self.tilts}


@dataclass(frozen=True)
class SeedTask:
    """One training run of the sweep.

    :param candidate: its leaderboard name (default the algorithm; a tilt candidate's differs)
    """

    algorithm: str
    seed: int
    config: AgentConfig
    env_spec: EnvSpec
    train: pd.DataFrame | MarketArrays
    validation: pd.DataFrame | MarketArrays
    test: pd.DataFrame | MarketArrays
    window: str = "split"
    keep_policy: bool = False
    candidate: str = ""

    def __post_init__(self) -> None:
        if not self.candidate:
            object.__setattr__(self, "candidate", self.algorithm)


def policy_to_bytes(policy: TrainedPolicy) -> bytes:
    """A trained policy as zip bytes, so it travels back from a Ray worker on another machine."""
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as folder:
        model_file = policy.save(Path(folder) / "policy")
        with zipfile.ZipFile(buffer, "w") as archive:
            for path in (model_file, model_file.with_suffix(".json")):
                archive.write(path, path.name)
    return buffer.getvalue()


def policy_from_bytes(algorithm: str, archive: bytes) -> TrainedPolicy:
    """Inverse of :func:`policy_to_bytes`."""
    with tempfile.TemporaryDirectory() as folder:
        with zipfile.ZipFile(io.BytesIO(archive)) as opened:
            opened.extractall(folder)
        return load_policy(algorithm, Path(folder) / "policy.zip")


@dataclass(frozen=True)
class SeedOutcome:
    """Validation and test results of one trained agent (one candidate, seed and window).

    :param candidate: its leaderboard name (default the algorithm; a tilt candidate's differs)
    :param env_spec: the environment it trained and was backtested in (``None`` when not recorded): a tilt
        candidate's action differs from the zoo's other agents'
    :param learning_curve: ``(timesteps, mean training reward per step)`` over its training
    """

    algorithm: str
    seed: int
    validation_sharpe: float
    test_sharpe: float
    test_return: float
    test_max_drawdown: float
    test_returns: pd.Series
    window: str = "split"
    policy_archive: bytes | None = None
    validation: PeriodFigures | None = None
    test: PeriodFigures | None = None
    candidate: str = ""
    env_spec: EnvSpec | None = None
    learning_curve: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.candidate:
            object.__setattr__(self, "candidate", self.algorithm)

    def policy(self) -> TrainedPolicy:
        """The trained agent, when the task asked to keep it."""
        if self.policy_archive is None:
            raise ValueError(f"{self.algorithm} seed {self.seed}: the task did not keep its policy")
        return policy_from_bytes(self.algorithm, self.policy_archive)

    def candidate_run(self, candidate: str | None = None) -> CandidateRun:
        """This run as a leaderboard entry of an RL agent (named :attr:`candidate` by default)."""
        if self.validation is None or self.test is None:
            raise ValueError(f"{self.candidate} seed {self.seed}: the outcome has no period figures")
        return CandidateRun(candidate or self.candidate, "agent", self.seed, self.validation, self.test)

    def trial_metrics(self) -> dict[str, float]:
        """What an experiment-tracking trial records of this run."""
        return {
            "validation_sharpe": self.validation_sharpe,
            "test_sharpe": self.test_sharpe,
            "test_max_drawdown": self.test_max_drawdown,
        }


def train_and_evaluate(task: SeedTask) -> SeedOutcome:
    """Train one agent and backtest it on validation and test (module level so Ray can ship it)."""
    with single_torch_thread():
        policy = train_agent(task.algorithm, task.train, task.env_spec, task.config, seed=task.seed)
        validation = run_backtest(policy, task.validation, task.env_spec)
        test = run_backtest(policy, task.test, task.env_spec)
    return SeedOutcome(
        algorithm=task.algorithm,
        seed=task.seed,
        validation_sharpe=validation.metrics.sharpe,
        test_sharpe=test.metrics.sharpe,
        test_return=test.metrics.total_return,
        test_max_drawdown=test.metrics.max_drawdown,
        test_returns=daily_returns(test.equity),
        window=task.window,
        policy_archive=policy_to_bytes(policy) if task.keep_policy else None,
        validation=PeriodFigures.of_result(validation),
        test=PeriodFigures.of_result(test),
        candidate=task.candidate,
        env_spec=task.env_spec,
        learning_curve=tuple(policy.learning_curve),
    )


# (train, validation, test) of one window, as frames or arrays (arrays convert each period only once).
Periods = tuple[pd.DataFrame | MarketArrays, pd.DataFrame | MarketArrays, pd.DataFrame | MarketArrays]


def grid_tasks(
    configs: Mapping[str, AgentConfig],
    seeds: Iterable[int],
    periods: Mapping[str, Periods],
    env_spec: EnvSpec,
    keep_policies: bool = False,
) -> list[SeedTask]:
    """Every agent x seed x window combination as one task.

    :param configs: training configuration by candidate name (the algorithm's name for a plain zoo agent)
    :param seeds: training seeds
    :param periods: (train, validation, test) features by window name
    :param env_spec: environment of every task
    :param keep_policies: return the trained policies with the outcomes
    """
    return [
        SeedTask(
            configs[name].algorithm,
            seed,
            configs[name],
            env_spec,
            *periods[window],
            window,
            keep_policies,
            candidate=name,
        )
        for name, seed, window in product(configs, list(seeds), periods)
    ]


def _bounds(part: pd.DataFrame | MarketArrays) -> tuple[pd.Timestamp, pd.Timestamp]:
    dates = part.dates if isinstance(part, MarketArrays) else pd.DatetimeIndex(part["date"])
    return dates.min(), dates.max()


def periods_for(
    env_spec: EnvSpec, full: pd.DataFrame | MarketArrays, periods: Mapping[str, Periods]
) -> dict[str, Periods]:
    """``periods`` cut again from the panel ``env_spec`` trades (:meth:`EnvSpec.market_for` of the full
    history ``full``), so a tilt candidate's prior at every date is fit on all the history before it."""
    market = env_spec.market_for(full)
    return {
        window: tuple(market.between(*_bounds(part)) for part in parts) for window, parts in periods.items()
    }


def tilt_tasks(
    plan: ZooConfig,
    full: pd.DataFrame | MarketArrays,
    periods: Mapping[str, Periods],
    env_spec: EnvSpec,
    keep_policies: bool = False,
) -> list[SeedTask]:
    """The tasks of the plan's tilt candidates: each in its own environment (``env_spec`` in ``tilt`` mode
    around its prior) on ``periods`` re-cut from ``full`` with the prior column (see :func:`periods_for`)."""
    full = as_market(full)  # converted once for every candidate
    tasks: list[SeedTask] = []
    for name, config in plan.tilt_configs().items():
        spec = TILT_CANDIDATES[name].env_spec(env_spec)
        tasks += grid_tasks(
            {name: config}, plan.seeds(), periods_for(spec, full, periods), spec, keep_policies
        )
    return tasks


def run_seed_sweep(tasks: list[SeedTask], use_ray: bool = True) -> list[SeedOutcome]:
    """Every task of the sweep, fanned out over Ray (or run in turn)."""
    return fan_out(train_and_evaluate, tasks, use_ray=use_ray)


def seed_table(outcomes: list[SeedOutcome]) -> pd.DataFrame:
    """One row per seed."""
    return pd.DataFrame(
        [
            {
                "candidate": o.candidate,
                "algorithm": o.algorithm,
                "window": o.window,
                "seed": o.seed,
                "validation_sharpe": o.validation_sharpe,
                "test_sharpe": o.test_sharpe,
                "test_return": o.test_return,
                "test_max_drawdown": o.test_max_drawdown,
            }
            for o in outcomes
        ]
    )


def distribution(table: pd.DataFrame) -> pd.DataFrame:
    """Min, 25th percentile, median, mean, std and max of every metric across seeds."""
    metrics = table.drop(columns=["candidate", "algorithm", "window", "seed"], errors="ignore")
    return pd.DataFrame(
        {
            "min": metrics.min(),
            "p25": metrics.quantile(0.25),
            "median": metrics.median(),
            "mean": metrics.mean(),
            "std": metrics.std(ddof=1) if len(metrics) > 1 else 0.0,
            "max": metrics.max(),
        }
    )


def per_period_sharpe_variance(outcomes: list[SeedOutcome]) -> float:
    """Variance across seeds of the per-period (daily) test Sharpe, the V of the deflated Sharpe ratio."""
    return sharpe_variance([o.test_sharpe for o in outcomes])
