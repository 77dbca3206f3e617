"""The leaderboard: every candidate (RL agents over seeds, ensembles, classical allocators, the equal-weight
benchmark) on validation and test after costs, and the picks validation makes from it.

A candidate is a recipe; a run is one training (or fit) of it. Candidates are ranked on validation only — by the
25th percentile of their validation Sharpe over runs, so a recipe that works for one lucky seed does not win —
and the test columns are reported, never used to choose. The deflated Sharpe ratio of each candidate's
representative run (the run validation picks) counts every trial the experiment ever made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from trading_core.evaluation.backtester import BacktestRecord, BacktestResult
from trading_core.evaluation.metrics import (
    compute_metrics,
    daily_returns,
    deflated_sharpe_ratio,
    per_period_sharpe_variance,
)
from trading_core.evaluation.regime_split import returns_by_regime_sharpe, validate_regimes
from trading_core.market.limits import HaltStatistics

KINDS: tuple[str, ...] = ("agent", "ensemble", "allocator", "sized", "benchmark")
# Kinds the registry can hold as a trading model: validation picks the registered candidate among them.
REGISTRABLE_KINDS: tuple[str, ...] = ("agent",)
ALLOCATOR_KINDS: tuple[str, ...] = ("allocator",)
BENCHMARK = "equal_weight_buy_and_hold"


@dataclass(frozen=True)
class PeriodFigures:
    """What one run did over one period, after costs.

    :param turnover: annualised traded notional / equity
    :param cost_drag: annualised costs / equity
    :param days_halted: bars the risk manager held the portfolio HALTED
    :param returns: daily returns (for the deflated Sharpe ratio)
    """

    sharpe: float
    total_return: float
    max_drawdown: float
    turnover: float
    cost_drag: float
    days_halted: int
    returns: pd.Series

    @classmethod
    def of_equity(
        cls,
        equity: pd.Series,
        traded_notional: pd.Series | None = None,
        costs: pd.Series | None = None,
        risk_states: pd.Series | None = None,
    ) -> PeriodFigures:
        metrics = compute_metrics(equity, traded_notional, costs)
        halted = 0 if risk_states is None else HaltStatistics.of_states(risk_states.to_numpy()).days_halted
        return cls(
            sharpe=metrics.sharpe,
            total_return=metrics.total_return,
            max_drawdown=metrics.max_drawdown,
            turnover=metrics.turnover,
            cost_drag=metrics.cost_drag,
            days_halted=halted,
            returns=daily_returns(equity),
        )

    @classmethod
    def missing(cls) -> PeriodFigures:
        """No figures for this period (an ensemble fit on validation has no honest validation run)."""
        nan = float("nan")
        return cls(nan, nan, nan, nan, nan, 0, pd.Series(dtype=np.float64))

    @classmethod
    def of_record(cls, record: BacktestRecord) -> PeriodFigures:
        return cls.of_equity(record.equity, record.traded_notional, record.costs, record.risk_states)

    @classmethod
    def of_result(cls, result: BacktestResult) -> PeriodFigures:
        """From a backtest result: its full record when it has one (fast engine), else its equity curve."""
        if result.record is not None:
            return cls.of_record(result.record)
        return cls.of_equity(result.equity)


@dataclass(frozen=True)
class CandidateRun:
    """One run of one candidate on validation and test.

    :param candidate: the candidate's name (``ppo``, ``weighted_ensemble``, ``min_variance``, ...)
    :param kind: one of :data:`KINDS`
    :param seed: training seed; ``None`` for deterministic candidates (allocators, the benchmark)
    """

    candidate: str
    kind: str
    seed: int | None
    validation: PeriodFigures
    test: PeriodFigures

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.candidate}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")


LEADERBOARD_COLUMNS = (
    "candidate",
    "kind",
    "runs",
    "validation_sharpe_p25",
    "validation_sharpe_median",
    "test_sharpe_p25",
    "test_sharpe_median",
    "test_return_median",
    "test_max_drawdown_worst",
    "test_days_halted_median",
    "test_turnover_median",
    "test_cost_drag_median",
    "deflated_sharpe",
    "representative_seed",
)


def regime_sharpe_column(regime: int) -> str:
    """The table column of the representative run's test Sharpe within one market regime."""
    return f"test_sharpe_regime_{regime}"


def _finite(value: float) -> float:
    return value if np.isfinite(value) else -np.inf


@dataclass(frozen=True)
class Leaderboard:
    """Every run of every candidate, and the table ranking them on validation.

    :param runs: the runs, any order
    :param n_trials: trials the deflated Sharpe ratio deflates for (every trial of the experiment, at least
        the runs here)
    :param regimes: market regime labels (0 = calmest) on every market date, e.g. the ``regime`` column of a
        causal regime filter; when given, :meth:`table` adds one :func:`regime_sharpe_column` per regime
        ``0 .. max label``
    """

    runs: tuple[CandidateRun, ...]
    n_trials: int
    regimes: pd.Series | None = None

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("a leaderboard needs at least one run")
        if self.regimes is not None:
            validate_regimes(self.regimes)
            if self.regimes.empty:
                raise ValueError("regimes must hold at least one label")
        object.__setattr__(self, "n_trials", max(int(self.n_trials), len(self.runs)))

    def candidates(self) -> list[str]:
        """Candidate names in the order they first appear."""
        return list(dict.fromkeys(run.candidate for run in self.runs))

    def runs_of(self, candidate: str) -> list[CandidateRun]:
        own = [run for run in self.runs if run.candidate == candidate]
        if not own:
            raise KeyError(
                f"no candidate {candidate!r} on the leaderboard; have {', '.join(self.candidates())}"
            )
        return own

    def kind_of(self, candidate: str) -> str:
        return self.runs_of(candidate)[0].kind

    def representative(self, candidate: str) -> CandidateRun:
        """The run validation picks: the best validation Sharpe (the lowest seed on ties)."""
        own = self.runs_of(candidate)
        return max(own, key=lambda run: (_finite(run.validation.sharpe), -(run.seed or 0)))

    def test_p25(self, candidate: str) -> float:
        """25th percentile over the candidate's runs of the test Sharpe."""
        return float(np.quantile([run.test.sharpe for run in self.runs_of(candidate)], 0.25))

    def _score(self, candidate: str) -> tuple[float, float]:
        """(25th percentile, median) of the validation Sharpe over runs; a candidate without validation runs
        ranks last (quantiles of -inf would be NaN, which no sort can order)."""
        sharpes = [run.validation.sharpe for run in self.runs_of(candidate)]
        sharpes = [value for value in sharpes if np.isfinite(value)]
        if not sharpes:
            return -np.inf, -np.inf
        return float(np.quantile(sharpes, 0.25)), float(np.median(sharpes))

    def best(self, kinds: Sequence[str]) -> str | None:
        """The candidate of ``kinds`` with the highest validation Sharpe at its runs' 25th percentile (then the
        median; then the name, for a stable order); ``None`` when none has those kinds."""
        eligible = [name for name in self.candidates() if self.kind_of(name) in kinds]
        if not eligible:
            return None
        return max(eligible, key=lambda name: (*self._score(name), name))

    def pick(self) -> str | None:
        """The registered candidate: the best registrable candidate on validation."""
        return self.best(REGISTRABLE_KINDS)

    def pick_allocator(self) -> str | None:
        """The allocator validation picks: the yardstick the registered candidate must beat."""
        return self.best(ALLOCATOR_KINDS)

    def deflated_sharpe(self, candidate: str) -> float:
        """DSR of the candidate's representative run on test, against every trial."""
        variance = per_period_sharpe_variance([run.test.sharpe for run in self.runs])
        return deflated_sharpe_ratio(self.representative(candidate).test.returns, self.n_trials, variance)

    @property
    def n_regimes(self) -> int:
        """Regimes the table splits the test Sharpe by (0 without regimes)."""
        return 0 if self.regimes is None else int(self.regimes.max()) + 1

    def regime_sharpes(self, candidate: str) -> dict[int, float]:
        """Test Sharpe of the candidate's representative run within each regime, each daily return attributed
        to the regime known at the close before it (:func:`returns_by_regime_sharpe`); NaN for a regime the
        test period never saw."""
        if self.regimes is None:
            raise ValueError("the leaderboard was given no regimes")
        returns = self.representative(candidate).test.returns
        return returns_by_regime_sharpe(returns, self.regimes, self.n_regimes)

    def table(self) -> pd.DataFrame:
        """One row per candidate, best validation first (the order :meth:`best` ranks them in); with regimes,
        the representative run's test Sharpe per regime follows the fixed :data:`LEADERBOARD_COLUMNS`."""
        rows = []
        for name in self.candidates():
            own = self.runs_of(name)
            validation = [run.validation.sharpe for run in own]
            test = [run.test for run in own]
            rows.append(
                {
                    "candidate": name,
                    "kind": own[0].kind,
                    "runs": len(own),
                    "validation_sharpe_p25": float(np.quantile(validation, 0.25)),
                    "validation_sharpe_median": float(np.median(validation)),
                    "test_sharpe_p25": float(np.quantile([t.sharpe for t in test], 0.25)),
                    "test_sharpe_median": float(np.median([t.sharpe for t in test])),
                    "test_return_median": float(np.median([t.total_return for t in test])),
                    "test_max_drawdown_worst": float(max(t.max_drawdown for t in test)) + 0.0,
                    "test_days_halted_median": float(np.median([t.days_halted for t in test])),
                    "test_turnover_median": float(np.median([t.turnover for t in test])),
                    "test_cost_drag_median": float(np.median([t.cost_drag for t in test])),
                    "deflated_sharpe": self.deflated_sharpe(name),
                    "representative_seed": self.representative(name).seed,
                }
            )
            if self.regimes is not None:
                rows[-1] |= {regime_sharpe_column(k): v for k, v in self.regime_sharpes(name).items()}
        regime_columns = [regime_sharpe_column(k) for k in range(self.n_regimes)]
        table = pd.DataFrame(rows, columns=[*LEADERBOARD_COLUMNS, *regime_columns])
        order = sorted(
            range(len(rows)), key=lambda i: (*self._score(rows[i]["candidate"]), rows[i]["candidate"])
        )
        return table.iloc[order[::-1]].reset_index(drop=True)


__all__ = [
    "BENCHMARK",
    "KINDS",
    "LEADERBOARD_COLUMNS",
    "CandidateRun",
    "Leaderboard",
    "PeriodFigures",
    "regime_sharpe_column",
]
