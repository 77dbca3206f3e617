"""A Gaussian HMM of market regimes, fitted on training dates, read causally through its forward filter.

hmmlearn fits the model (Baum-Welch); it never labels a date here. ``predict_proba`` is forward-backward
smoothing: the probability at date t there uses every later bar. The probabilities this module gives are the
forward filter's, ``alpha_t ∝ emission_t * (alpha_{t-1} @ transmat)``, computed by :class:`RegimeFilter` one date
at a time; :meth:`RegimeModel.filter` loops over that same filter, so batch and live values are the same numbers.

The model observes ``(market_return, log market_volatility)`` standardised by the training dates' mean and
standard deviation; regimes are numbered by their mean log volatility, 0 the calmest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from hmmlearn.hmm import GaussianHMM
from threadpoolctl import threadpool_limits

from trading_core.regimes.settings import RegimeConfig
from trading_core.regimes.signals import SIGNAL_COLUMNS, MarketSignalStream, market_signals

__all__ = [
    "MODEL_FORMAT_VERSION",
    "RegimeConfig",
    "RegimeFilter",
    "RegimeModel",
    "RegimeStream",
    "market_signals",
    "regime_changes",
    "regime_columns",
]

MODEL_FORMAT_VERSION = 1
REGIME_PREFIX = "p_regime_"


def regime_columns(n_regimes: int) -> list[str]:
    """``p_regime_0 .. p_regime_{K-1}``: the filtered probability columns."""
    return [f"{REGIME_PREFIX}{k}" for k in range(n_regimes)]


def _checked_signals(signals: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in SIGNAL_COLUMNS if c not in signals.columns]
    if missing:
        raise ValueError(f"signals lack columns {missing}")
    if not isinstance(signals.index, pd.DatetimeIndex):
        raise ValueError("signals must be indexed by date (a DatetimeIndex)")
    if not signals.index.is_monotonic_increasing or signals.index.has_duplicates:
        raise ValueError("signals' dates must be unique and increasing")
    volatility = signals["market_volatility"].to_numpy(dtype=np.float64)
    if (volatility[np.isfinite(volatility)] <= 0).any():
        raise ValueError("market_volatility must be positive where known")
    return signals


def _observations(market_return: np.ndarray, market_volatility: np.ndarray) -> np.ndarray:
    """The model's raw inputs ``[return, log volatility]``, shape ``(dates, 2)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.column_stack([market_return, np.log(market_volatility)])


@dataclass(frozen=True, eq=False)
class RegimeModel:
    """A fitted regime HMM: its parameters in regime order (0 = calmest) and the inputs' standardisation.

    :param config: the settings it was fitted with
    :param start_probabilities: ``(K,)`` probabilities of the first date's regime
    :param transition_matrix: ``(K, K)``, row ``i`` the next date's regime probabilities from regime ``i``
    :param means: ``(K, 2)`` emission means of the standardised inputs
    :param covariances: ``(K, 2, 2)`` emission covariances of the standardised inputs
    :param input_mean: ``(2,)`` training mean of ``[market_return, log market_volatility]``
    :param input_scale: ``(2,)`` training standard deviation of the same
    :param train_start: first training date
    :param train_end: last training date
    :param log_likelihood: training log-likelihood of the kept restart
    :param converged: whether Baum-Welch converged within ``config.n_iter``
    """

    config: RegimeConfig
    start_probabilities: np.ndarray
    transition_matrix: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    input_mean: np.ndarray
    input_scale: np.ndarray
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    log_likelihood: float
    converged: bool

    def __post_init__(self) -> None:
        k = self.config.n_regimes
        shapes = {
            "start_probabilities": (self.start_probabilities, (k,)),
            "transition_matrix": (self.transition_matrix, (k, k)),
            "means": (self.means, (k, 2)),
            "covariances": (self.covariances, (k, 2, 2)),
            "input_mean": (self.input_mean, (2,)),
            "input_scale": (self.input_scale, (2,)),
        }
        for name, (value, shape) in shapes.items():
            if np.shape(value) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {np.shape(value)}")
            if not np.isfinite(value).all():
                raise ValueError(f"{name} holds non-finite values")
        if not np.allclose(self.transition_matrix.sum(axis=1), 1.0) or (self.transition_matrix < 0).any():
            raise ValueError("transition_matrix rows must be probabilities summing to 1")
        if not np.isclose(self.start_probabilities.sum(), 1.0) or (self.start_probabilities < 0).any():
            raise ValueError("start_probabilities must be probabilities summing to 1")
        if (self.input_scale <= 0).any():
            raise ValueError("input_scale must be positive")
        # Cholesky also proves every covariance positive definite.
        try:
            factors = np.linalg.cholesky(self.covariances)
        except np.linalg.LinAlgError:
            raise ValueError("covariances must be positive definite") from None
        precisions = np.linalg.inv(self.covariances)
        log_det = 2.0 * np.log(np.diagonal(factors, axis1=1, axis2=2)).sum(axis=1)
        object.__setattr__(self, "_precisions", precisions)
        object.__setattr__(self, "_log_norm", -0.5 * (2 * np.log(2 * np.pi) + log_det))

    @property
    def n_regimes(self) -> int:
        return self.config.n_regimes

    @property
    def columns(self) -> list[str]:
        """``p_regime_0 .. p_regime_{K-1}``."""
        return regime_columns(self.n_regimes)

    @classmethod
    def fit(
        cls, signals: pd.DataFrame, config: RegimeConfig, train_end: pd.Timestamp | str | None = None
    ) -> RegimeModel:
        """Fit the HMM on the signals' dates up to ``train_end`` (all given dates when ``None``).

        Dates without a complete signal (the volatility window's warm-up) are left out of the fit; the kept
        restart is the one of highest training log-likelihood, ties to the lowest seed.

        :param signals: :func:`market_signals` output
        :param config: the model's settings
        :param train_end: last training date (inclusive); later rows are never read
        """
        signals = _checked_signals(signals)
        if train_end is not None:
            signals = signals.loc[: pd.Timestamp(train_end)]
        observed = _observations(
            signals["market_return"].to_numpy(dtype=np.float64),
            signals["market_volatility"].to_numpy(dtype=np.float64),
        )
        complete = np.isfinite(observed).all(axis=1)
        if complete.sum() < config.min_fit_dates:
            raise ValueError(
                f"signals hold {int(complete.sum())} training dates with a return and a volatility; "
                f"fitting needs at least min_fit_dates={config.min_fit_dates}"
            )
        dates = signals.index[complete]
        raw = observed[complete]
        input_mean, input_scale = raw.mean(axis=0), raw.std(axis=0)
        if (input_scale <= 0).any():
            raise ValueError("the training signals are constant; a regime model needs varying returns")
        inputs = (raw - input_mean) / input_scale
        best: GaussianHMM | None = None
        best_score = -np.inf
        for restart in range(config.n_restarts):
            hmm = GaussianHMM(
                n_components=config.n_regimes,
                covariance_type=config.covariance_type,
                n_iter=config.n_iter,
                tol=config.tolerance,
                random_state=config.seed + restart,
            )
            # One BLAS/OpenMP thread: on a few thousand 2-d points, k-means and the E-step run ~40x slower when
            # their thread pools contend for shared cores.
            with threadpool_limits(limits=1):
                hmm.fit(inputs)
                score = hmm.score(inputs)
            if score > best_score:
                best, best_score = hmm, score
        assert best is not None  # n_restarts >= 1
        order = np.argsort(best.means_[:, 1], kind="stable")  # by mean log volatility: 0 is the calmest
        return cls(
            config=config,
            start_probabilities=best.startprob_[order].copy(),
            transition_matrix=best.transmat_[np.ix_(order, order)].copy(),
            means=best.means_[order].copy(),
            covariances=np.asarray(best.covars_)[order].copy(),
            input_mean=input_mean,
            input_scale=input_scale,
            train_start=pd.Timestamp(dates[0]),
            train_end=pd.Timestamp(dates[-1]),
            log_likelihood=float(best_score),
            converged=bool(best.monitor_.converged),
        )

    def log_emissions(self, market_return: float, market_volatility: float) -> np.ndarray:
        """Log density of one date's signals under each regime, ``(K,)``."""
        x = (_observations(np.array([market_return]), np.array([market_volatility]))[0] - self.input_mean) / (
            self.input_scale
        )
        diff = x[None, :] - self.means
        mahalanobis = np.einsum("ki,kij,kj->k", diff, self._precisions, diff)
        return self._log_norm - 0.5 * mahalanobis

    def filter(self, signals: pd.DataFrame) -> pd.DataFrame:
        """The forward filter over every date of ``signals``: row t reads rows up to t only.

        A date without a complete signal (warm-up) carries the prediction ``alpha_{t-1} @ transmat`` forward.

        :param signals: :func:`market_signals` output, dates increasing
        :return: frame indexed by ``date`` with ``regime`` (argmax) and ``p_regime_0 .. p_regime_{K-1}``
        """
        signals = _checked_signals(signals)
        running = RegimeFilter(self)
        returns = signals["market_return"].to_numpy(dtype=np.float64)
        volatility = signals["market_volatility"].to_numpy(dtype=np.float64)
        probabilities = np.empty((len(signals), self.n_regimes))
        for row in range(len(signals)):
            probabilities[row] = running.update(returns[row], volatility[row])
        frame = pd.DataFrame(probabilities, index=signals.index.rename("date"), columns=self.columns)
        frame.insert(0, "regime", probabilities.argmax(axis=1).astype(np.int64))
        return frame

    def to_dict(self) -> dict[str, Any]:
        """The model as JSON values only (lists of floats, ISO dates); :meth:`from_dict` rebuilds it exactly."""
        return {
            "format_version": MODEL_FORMAT_VERSION,
            "config": self.config.as_dict(),
            "start_probabilities": self.start_probabilities.tolist(),
            "transition_matrix": self.transition_matrix.tolist(),
            "means": self.means.tolist(),
            "covariances": self.covariances.tolist(),
            "input_mean": self.input_mean.tolist(),
            "input_scale": self.input_scale.tolist(),
            "train_start": self.train_start.isoformat(),
            "train_end": self.train_end.isoformat(),
            "log_likelihood": self.log_likelihood,
            "converged": self.converged,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegimeModel:
        """Rebuild a model from :meth:`to_dict` output (floats round-trip exactly through JSON)."""
        if data.get("format_version") != MODEL_FORMAT_VERSION:
            raise ValueError(f"unsupported regime model format_version {data.get('format_version')!r}")
        array = {
            name: np.asarray(data[name], dtype=np.float64)
            for name in (
                "start_probabilities",
                "transition_matrix",
                "means",
                "covariances",
                "input_mean",
                "input_scale",
            )
        }
        return cls(
            config=RegimeConfig(**data["config"]),
            train_start=pd.Timestamp(data["train_start"]),
            train_end=pd.Timestamp(data["train_end"]),
            log_likelihood=float(data["log_likelihood"]),
            converged=bool(data["converged"]),
            **array,
        )


class RegimeFilter:
    """The forward filter one date at a time: the home of the recursion :meth:`RegimeModel.filter` loops over.

    :param model: the fitted model
    """

    def __init__(self, model: RegimeModel) -> None:
        self.model = model
        self._probabilities: np.ndarray | None = None

    @property
    def probabilities(self) -> np.ndarray | None:
        """The last filtered probabilities (``None`` before the first update)."""
        return None if self._probabilities is None else self._probabilities.copy()

    def update(self, market_return: float, market_volatility: float) -> np.ndarray:
        """Filter one more date: ``alpha_t ∝ emission_t * (alpha_{t-1} @ transmat)``.

        :param market_return: the date's equal-weight market return (NaN: unknown)
        :param market_volatility: its trailing volatility (NaN: unknown, e.g. in the warm-up)
        :return: ``(K,)`` probabilities of each regime at this date
        """
        model = self.model
        prior = (
            model.start_probabilities
            if self._probabilities is None
            else self._probabilities @ model.transition_matrix
        )
        if np.isfinite(market_return) and np.isfinite(market_volatility) and market_volatility > 0:
            log_emission = model.log_emissions(market_return, market_volatility)
            # Shifted by the max so no regime's density underflows on a crash day.
            weights = np.exp(log_emission - log_emission.max()) * prior
            posterior = weights / weights.sum()
        else:
            posterior = prior / prior.sum()
        self._probabilities = posterior
        return posterior.copy()

    def state(self) -> dict[str, Any]:
        """The filter's state as JSON values (see :meth:`load_state`)."""
        return {"probabilities": None if self._probabilities is None else self._probabilities.tolist()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        probabilities = state["probabilities"]
        self._probabilities = None if probabilities is None else np.asarray(probabilities, dtype=np.float64)


class RegimeStream:
    """Closes in, regime probabilities out, one date at a time: :func:`market_signals` then
    :meth:`RegimeModel.filter`, for the live loop.

    :param model: the fitted model (its ``config.volatility_window`` sets the signals' window)
    """

    def __init__(self, model: RegimeModel) -> None:
        self.model = model
        self.signals = MarketSignalStream(model.config.volatility_window)
        self.filter = RegimeFilter(model)

    def update(self, closes: Mapping[str, float]) -> np.ndarray:
        """Consume one date's closes; return its ``(K,)`` filtered probabilities.

        :param closes: the close of every ticker trading on the date
        """
        return self.filter.update(*self.signals.update(closes))

    def state(self) -> dict[str, Any]:
        """Model and state as JSON values (see :meth:`from_state`)."""
        return {
            "model": self.model.to_dict(),
            "signals": self.signals.state(),
            "filter": self.filter.state(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RegimeStream:
        """Rebuild a stream that continues where :meth:`state` was taken."""
        stream = cls(RegimeModel.from_dict(state["model"]))
        stream.signals = MarketSignalStream.from_state(state["signals"])
        stream.filter.load_state(state["filter"])
        return stream


def regime_changes(regimes: pd.DataFrame, min_duration: int = 5) -> pd.DataFrame:
    """Dates where the filtered regime switched and then held for ``min_duration`` dates.

    Shorter spells are noise: the regime in force stays the last one that held. The first spell that holds sets
    the starting regime and is no change.

    :param regimes: :meth:`RegimeModel.filter` output (a ``regime`` column indexed by date)
    :param min_duration: dates a new regime must hold, its first date included, to count as a change
    :return: one row per change: ``date`` (first date of the new regime), ``from_regime``, ``to_regime``,
        ``confirmed_on`` (the date it had held ``min_duration`` dates, the first date monitoring can know it)
        and ``duration`` (dates the spell lasted, up to the end of the data)
    """
    if min_duration < 1:
        raise ValueError(f"min_duration must be at least 1, got {min_duration}")
    if "regime" not in regimes.columns:
        raise ValueError("regimes lack the column 'regime'")
    labels = regimes["regime"].to_numpy()
    dates = pd.DatetimeIndex(regimes.index)
    rows: list[dict[str, Any]] = []
    in_force: int | None = None
    start = 0
    while start < len(labels):
        end = start
        while end + 1 < len(labels) and labels[end + 1] == labels[start]:
            end += 1
        duration = end - start + 1
        label = int(labels[start])
        if duration >= min_duration:
            if in_force is not None and label != in_force:
                rows.append(
                    {
                        "date": dates[start],
                        "from_regime": in_force,
                        "to_regime": label,
                        "confirmed_on": dates[start + min_duration - 1],
                        "duration": duration,
                    }
                )
            in_force = label
        start = end + 1
    columns = ["date", "from_regime", "to_regime", "confirmed_on", "duration"]
    return pd.DataFrame(rows, columns=columns)
