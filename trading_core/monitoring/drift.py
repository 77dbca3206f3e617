"""Drift of model inputs and decay of live performance against a reference period.

Used twice: by the pipeline's champion-monitoring asset (reference = training/validation window, current = recent
live or paper-trading window) and by the live agent, whose drift score (:class:`LiveDriftScore`) feeds the
``model_drift`` alert rule.

Population stability index convention (:func:`population_stability_index`):

- bins are the ``bins``-quantiles of the *reference* sample, so every reference bin holds about the same share;
  the outer bins are open (``-inf`` and ``+inf`` edges), so current values outside the reference range still count;
  bins are left-closed, ``[edge_i, edge_{i+1})``; quantile edges that coincide (ties in the reference) merge, so a
  reference with few distinct values gives fewer, unequal bins;
- a bin that is empty in either sample has its share replaced by ``epsilon`` (1e-4 by default) before the log,
  without renormalising, so the index stays finite; with that convention a current sample lying entirely above
  (or below) the reference range scores about 8.3 with ten bins, never infinity;
- ``PSI = sum_i (current_i - reference_i) * ln(current_i / reference_i)``; the usual reading is < 0.1 stable,
  0.1 .. 0.25 moderate shift, >= 0.25 significant shift (the default ``psi_threshold`` of :func:`feature_drift`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp, ttest_ind

from trading_core.market.measures import PERIODS_PER_YEAR

PSI_EPSILON = 1e-4
FEATURE_DRIFT_COLUMNS: tuple[str, ...] = (
    "psi",
    "ks_statistic",
    "ks_pvalue",
    "reference_mean",
    "reference_std",
    "current_mean",
    "current_std",
    "drifted",
)


def _finite_sample(values: np.ndarray | pd.Series | Sequence[float], name: str) -> np.ndarray:
    """A 1-D float array without NaN or infinities; raise when nothing is left."""
    array = np.asarray(values, dtype=float).ravel()
    array = array[np.isfinite(array)]
    if len(array) == 0:
        raise ValueError(f"{name} has no finite values")
    return array


def population_stability_index(
    reference: np.ndarray, current: np.ndarray, bins: int = 10, *, epsilon: float = PSI_EPSILON
) -> float:
    """Population stability index of ``current`` against ``reference`` (see the module docstring for the bins).

    NaN and infinite values are ignored in both samples.

    :param reference: sample of the reference period (defines the quantile bins)
    :param current: sample of the period under test
    :param bins: number of reference quantile bins (fewer when reference quantiles tie)
    :param epsilon: share used in place of an empty bin's share (keeps the log finite)
    :return: the index, 0 for identical bin shares, larger for larger shifts
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon must lie in (0, 1), got {epsilon}")
    reference = _finite_sample(reference, "reference")
    current = _finite_sample(current, "current")
    # Interior edges only: the outer bins reach to -inf and +inf.
    interior_edges = np.unique(np.quantile(reference, np.arange(1, bins) / bins))
    n_bins = len(interior_edges) + 1
    reference_share = np.bincount(np.searchsorted(interior_edges, reference, side="right"), minlength=n_bins)
    current_share = np.bincount(np.searchsorted(interior_edges, current, side="right"), minlength=n_bins)
    reference_share = np.maximum(reference_share / len(reference), epsilon)
    current_share = np.maximum(current_share / len(current), epsilon)
    return float(np.sum((current_share - reference_share) * np.log(current_share / reference_share)))


def feature_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    bins: int = 10,
    *,
    psi_threshold: float = 0.25,
    ks_pvalue_threshold: float = 0.01,
) -> pd.DataFrame:
    """Drift of each feature column between a reference and a current frame.

    A column has ``drifted`` when its PSI reaches ``psi_threshold`` or the two-sample Kolmogorov-Smirnov test
    rejects equal distributions at ``ks_pvalue_threshold``. NaN values are dropped per column; standard deviations
    use ``ddof=1``.

    :param reference: features of the reference period
    :param current: features of the period under test
    :param columns: feature columns to compare (must exist in both frames)
    :param bins: reference quantile bins of the PSI
    :param psi_threshold: PSI at or above which a column has drifted
    :param ks_pvalue_threshold: KS p-value below which a column has drifted
    :return: one row per column (index ``feature``) with the columns of :data:`FEATURE_DRIFT_COLUMNS`
    """
    missing = [
        f"{column!r} ({frame_name})"
        for frame_name, frame in (("reference", reference), ("current", current))
        for column in columns
        if column not in frame.columns
    ]
    if missing:
        raise KeyError(f"feature columns not found: {', '.join(missing)}")
    rows = []
    for column in columns:
        reference_values = _finite_sample(reference[column], f"reference[{column!r}]")
        current_values = _finite_sample(current[column], f"current[{column!r}]")
        psi = population_stability_index(reference_values, current_values, bins)
        ks = ks_2samp(reference_values, current_values)
        rows.append(
            {
                "feature": column,
                "psi": psi,
                "ks_statistic": float(ks.statistic),
                "ks_pvalue": float(ks.pvalue),
                "reference_mean": float(reference_values.mean()),
                "reference_std": float(reference_values.std(ddof=1)) if len(reference_values) > 1 else 0.0,
                "current_mean": float(current_values.mean()),
                "current_std": float(current_values.std(ddof=1)) if len(current_values) > 1 else 0.0,
                "drifted": bool(psi >= psi_threshold or ks.pvalue < ks_pvalue_threshold),
            }
        )
    return pd.DataFrame(rows, columns=["feature", *FEATURE_DRIFT_COLUMNS]).set_index("feature")


@dataclass(frozen=True)
class PerformanceDecay:
    """Live performance against the reference period.

    :param reference_sharpe: annualised Sharpe ratio of the reference returns
    :param recent_sharpe: annualised Sharpe ratio of the recent returns
    :param sharpe_difference: ``recent_sharpe - reference_sharpe`` (negative when performance fell)
    :param p_value: one-sided Welch t-test p-value of "recent mean return < reference mean return"
    :param decayed: ``p_value < alpha``: the recent mean return is significantly lower
    :param reference_periods: number of reference returns used
    :param recent_periods: number of recent returns used
    """

    reference_sharpe: float
    recent_sharpe: float
    sharpe_difference: float
    p_value: float
    decayed: bool
    reference_periods: int
    recent_periods: int

    def as_dict(self) -> dict[str, float | bool | int]:
        return asdict(self)


def _annualised_sharpe(returns: np.ndarray, periods_per_year: int) -> float:
    # Constant returns have no volatility; testing ptp, not std, avoids a rounding-noise std near 1e-19.
    if np.ptp(returns) == 0:
        return 0.0
    return float(np.sqrt(periods_per_year) * returns.mean() / returns.std(ddof=1))


def performance_decay(
    reference_returns: np.ndarray | pd.Series | Sequence[float],
    recent_returns: np.ndarray | pd.Series | Sequence[float],
    *,
    alpha: float = 0.05,
    periods_per_year: int = PERIODS_PER_YEAR,
) -> PerformanceDecay:
    """Whether recent per-period returns are significantly worse than the reference period's.

    The test compares mean returns with Welch's unequal-variance t-test, one-sided (recent lower), which suits
    samples of different lengths and volatilities; Sharpe ratios (``ddof=1``, zero risk-free rate, as in
    :mod:`trading_core.evaluation.metrics`) are reported for reading. When both samples have zero variance the difference of
    means is exact: the p-value is 0 if the recent mean is lower, else 1. NaN values are ignored.

    :param reference_returns: per-period simple returns of the reference (e.g. backtest) period
    :param recent_returns: per-period simple returns of the recent live period
    :param alpha: significance level of the ``decayed`` flag
    :param periods_per_year: periods a year used to annualise the Sharpe ratios
    :return: the comparison
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    reference = _finite_sample(reference_returns, "reference_returns")
    recent = _finite_sample(recent_returns, "recent_returns")
    if len(reference) < 2 or len(recent) < 2:
        raise ValueError(
            f"need at least 2 returns in each sample, got {len(reference)} reference and {len(recent)} recent"
        )
    if np.ptp(reference) == 0 and np.ptp(recent) == 0:
        p_value = 0.0 if recent[0] < reference[0] else 1.0  # compare values: means carry rounding noise
    else:
        p_value = float(ttest_ind(recent, reference, equal_var=False, alternative="less").pvalue)
    reference_sharpe = _annualised_sharpe(reference, periods_per_year)
    recent_sharpe = _annualised_sharpe(recent, periods_per_year)
    return PerformanceDecay(
        reference_sharpe=reference_sharpe,
        recent_sharpe=recent_sharpe,
        sharpe_difference=recent_sharpe - reference_sharpe,
        p_value=p_value,
        decayed=p_value < alpha,
        reference_periods=len(reference),
        recent_periods=len(recent),
    )


def psi_against_quantiles(
    inner_edges: np.ndarray, current: np.ndarray, *, epsilon: float = PSI_EPSILON
) -> float:
    """PSI of ``current`` against a reference known only by its quantiles (bins of equal expected share).

    :param inner_edges: the reference's inner bin edges, e.g. its nine inner deciles
    :param current: values of the period under test (NaNs dropped)
    """
    values = np.asarray(current, dtype=np.float64)
    values = values[np.isfinite(values)]
    n_bins = len(inner_edges) + 1
    if values.size == 0:
        return 0.0
    current_share = np.maximum(
        np.bincount(np.searchsorted(inner_edges, values, side="right"), minlength=n_bins) / values.size,
        epsilon,
    )
    reference_share = np.full(n_bins, 1.0 / n_bins)
    return float(np.sum((current_share - reference_share) * np.log(current_share / reference_share)))


class LiveDriftScore:
    """The live model-drift score: the largest PSI of the recent feature rows against the training deciles.

    Every bar adds its rows; every ``every`` bars, once half the window is filled, the score is recomputed over the
    last ``window`` bars and kept until the next one. :meth:`state` and :meth:`load_state` carry the window and the
    score across a restart, so a resumed session scores (and alerts) as an uninterrupted one would.

    :param reference: inner bin edges of each scored column, in the column order of the rows (e.g. a decision
        spec's ``reference_quantiles``)
    :param window: bars of rows the score reads
    :param every: bars between two scores
    """

    def __init__(self, reference: Mapping[str, Sequence[float]], window: int, every: int) -> None:
        if window < 1 or every < 1:
            raise ValueError(f"window and every must be positive, got {window} and {every}")
        self.columns = tuple(reference)
        self._edges = [np.asarray(edges, dtype=np.float64) for edges in reference.values()]
        self.window, self.every = window, every
        self._rows: deque[np.ndarray] = deque(maxlen=window)
        self.score: float | None = None

    def update(self, rows: np.ndarray, bar: int) -> float | None:
        """Add one bar's rows ``[n_assets, len(columns)]``; returns the score, new when ``bar`` is a scoring bar.

        :param bar: bars completed so far (the scoring bars are its multiples of ``every``)
        """
        self._rows.append(np.asarray(rows, dtype=np.float64))
        if bar % self.every == 0 and len(self._rows) >= self.window // 2:
            recent = np.concatenate(list(self._rows))
            self.score = max(
                psi_against_quantiles(edges, recent[:, i]) for i, edges in enumerate(self._edges)
            )
        return self.score

    def state(self) -> dict[str, Any]:
        """The window's rows (one ``[bars, n_assets, columns]`` array, ``None`` when empty) and the score."""
        return {"rows": np.stack(list(self._rows)) if self._rows else None, "score": self.score}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state`.

        :raises ValueError: rows of another width than the scored columns
        """
        rows, score = state["rows"], state["score"]
        if rows is not None and (np.ndim(rows) != 3 or np.shape(rows)[2] != len(self.columns)):
            raise ValueError(
                f"drift rows of shape {np.shape(rows)} do not score the {len(self.columns)} columns"
            )
        self._rows.clear()
        self._rows.extend(np.asarray(rows, dtype=np.float64) if rows is not None else ())
        self.score = None if score is None else float(score)
