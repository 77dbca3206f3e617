"""Fast executors: how a day's parent orders are cut into child orders over the session's bars.

Every executor plans at the session's start, from what is known at the close before it (earlier sessions' bars,
the daily engine's estimates), a cumulative schedule ``[M, N]``: the fraction of each parent it means to have
traded by the end of bar ``m``. At bar ``m`` it sends, where the schedule has stepped up since its last child,
the whole shares still due: ``trunc(schedule[m] * parent) - filled``, where ``filled`` holds its fills up to bar
``m-1``. A slice
the market did not fill (the participation cap, missing cash) is so carried into the next slice; what the last
slice cannot fill stays unfilled. Nothing an executor reads comes from bar ``m`` or later.

References: Almgren, R. and Chriss, N. (2000). Optimal Execution of Portfolio Transactions. Journal of Risk 3,
5-39 (the discrete-time trajectory ``x_k = sinh(kappa (n - k)) / sinh(kappa n)``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from trading_core.market.costs import ImpactModel


@dataclass(frozen=True)
class SessionPlan:
    """What an executor may know when it plans session ``d`` (before its first bar).

    :param n_bars: grid bars of the session
    :param previous_volume: ``[D, M, N]`` volumes of the D sessions before ``d`` (D may be 0)
    :param previous_present: ``[D, M, N]`` which of those bars exist
    :param price: ``[N]`` the decision close of ``d-1``
    :param adv: ``[N]`` average daily volume known at ``d-1``
    :param sigma: ``[N]`` daily return volatility known at ``d-1``
    :param impact: the cost model's impact model
    """

    n_bars: int
    previous_volume: np.ndarray
    previous_present: np.ndarray
    price: np.ndarray
    adv: np.ndarray
    sigma: np.ndarray
    impact: ImpactModel


def slice_bars(n_bars: int, slices: int | None, start: int = 0, stop: int | None = None) -> np.ndarray:
    """The bars ``[K]`` of ``slices`` evenly spaced child orders over bars ``start .. stop-1``, the first at
    ``start`` (every bar of the window when ``slices`` is ``None`` or exceeds it).

    :raises ValueError: the window is empty or ``slices`` is not positive
    """
    stop = n_bars if stop is None else stop
    if not 0 <= start < stop <= n_bars:
        raise ValueError(f"window: need 0 <= start < stop <= {n_bars}, got start={start}, stop={stop}")
    width = stop - start
    if slices is not None and slices < 1:
        raise ValueError(f"slices must be a positive integer or None, got {slices!r}")
    count = width if slices is None else min(slices, width)
    return start + (np.arange(count) * width) // count


def cumulative_plan(n_bars: int, bars: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The cumulative schedule ``[M, N]`` of child weights ``[K, N]`` sent at ``bars`` ``[K]`` (each column is
    normalised to end at 1; a column of zero weights trades evenly)."""
    weights = np.asarray(weights, dtype=np.float64)
    totals = weights.sum(axis=0)
    even = np.full_like(weights, 1.0 / len(bars))
    weights = np.where(totals > 0, weights / np.where(totals > 0, totals, 1.0), even)
    steps = np.zeros((n_bars, weights.shape[1]))
    np.add.at(steps, bars, weights)
    plan = np.cumsum(steps, axis=0)
    plan[bars[-1] :] = 1.0  # exactly 1 from the last slice on: rounding must not leave a share behind
    return plan


def volume_profile(previous_volume: np.ndarray, previous_present: np.ndarray, n_bars: int) -> np.ndarray:
    """Each bar's expected share of the session's volume ``[M, N]``, the mean over earlier sessions of their own
    shares; the flat profile ``1 / M`` when there is no earlier session with volume.

    :param previous_volume: ``[D, M, N]`` volumes of earlier sessions
    :param previous_present: ``[D, M, N]`` which of their bars exist
    """
    flat = np.full((n_bars, previous_volume.shape[-1]), 1.0 / n_bars)
    if previous_volume.shape[0] == 0:
        return flat
    volume = np.where(previous_present, np.maximum(previous_volume, 0.0), 0.0)
    totals = volume.sum(axis=1, keepdims=True)
    shares = np.divide(volume, totals, out=np.zeros_like(volume), where=totals > 0)
    days = (totals[:, 0, :] > 0).sum(axis=0)
    profile = np.divide(shares.sum(axis=0), days, out=flat.copy(), where=days > 0)
    return profile


class Executor(ABC):
    """A fast executor: plans a session's cumulative schedule, then sends the child orders it makes due."""

    name: str

    @abstractmethod
    def plan(self, session: SessionPlan) -> np.ndarray:
        """The cumulative fraction ``[M, N]`` of every parent to have traded by the end of each bar."""

    def child_orders(
        self, bar: int, parent: np.ndarray, filled: np.ndarray, sent: np.ndarray, plan: np.ndarray
    ) -> np.ndarray:
        """The child orders ``[N]`` sent at ``bar``: the whole shares still due where the plan has stepped up
        since the last child sent (a slice whose bar did not exist goes out at the next bar that does).

        :param bar: the bar the orders fill on
        :param parent: ``[N]`` signed parent shares
        :param filled: ``[N]`` signed shares filled on bars ``< bar``
        :param sent: ``[N]`` the plan's level when the last child was sent (0 before the first)
        :param plan: ``[M, N]`` this session's plan
        """
        due = plan[bar] > sent
        # Rounded before the truncation: 3/13 of 13 shares is 2.9999999999999996 in floating point, not 2.
        target = np.trunc(np.round(plan[bar] * parent, 9))
        return np.where(due, target - filled, 0.0)


@dataclass(frozen=True)
class ImmediateExecutor(Executor):
    """The whole parent at the session's first bar: the daily engine's next-open fill, on intraday bars."""

    name: str = "immediate"

    def plan(self, session: SessionPlan) -> np.ndarray:
        return np.ones((session.n_bars, len(session.price)))


@dataclass(frozen=True)
class TwapExecutor(Executor):
    """Equal child orders at ``slices`` evenly spaced bars of the window ``start .. stop-1``.

    :param slices: child orders per parent; ``None`` for one at every bar of the window
    :param start: first bar of the window
    :param stop: bar after the window's last (``None``: the session's end)
    """

    slices: int | None = 13
    start: int = 0
    stop: int | None = None
    name: str = "twap"

    def plan(self, session: SessionPlan) -> np.ndarray:
        bars = slice_bars(session.n_bars, self.slices, self.start, self.stop)
        return cumulative_plan(session.n_bars, bars, np.ones((len(bars), len(session.price))))


def _bucket_weights(profile: np.ndarray, bars: np.ndarray, stop: int) -> np.ndarray:
    """The profile's volume of the bars each slice stands for: slice k covers ``bars[k] .. bars[k+1]-1``."""
    edges = np.append(bars, stop)
    cumulative = np.vstack([np.zeros((1, profile.shape[1])), np.cumsum(profile, axis=0)])
    return cumulative[edges[1:]] - cumulative[edges[:-1]]


@dataclass(frozen=True)
class VwapExecutor(Executor):
    """Child orders in proportion to the volume profile of earlier sessions only (:func:`volume_profile`; flat
    on the first session), at the same bars as :class:`TwapExecutor`.

    :param slices: child orders per parent; ``None`` for one at every bar of the window
    :param lookback_sessions: earlier sessions the profile averages (``None``: all of them)
    :param start: first bar of the window
    :param stop: bar after the window's last (``None``: the session's end)
    """

    slices: int | None = 13
    lookback_sessions: int | None = 20
    start: int = 0
    stop: int | None = None
    name: str = "vwap"

    def plan(self, session: SessionPlan) -> np.ndarray:
        volume, present = session.previous_volume, session.previous_present
        if self.lookback_sessions is not None:
            volume, present = volume[-self.lookback_sessions :], present[-self.lookback_sessions :]
        profile = volume_profile(volume, present, session.n_bars)
        stop = session.n_bars if self.stop is None else self.stop
        bars = slice_bars(session.n_bars, self.slices, self.start, stop)
        return cumulative_plan(session.n_bars, bars, _bucket_weights(profile, bars, stop))


def almgren_chriss_holdings(kappa: np.ndarray, n_slices: int) -> np.ndarray:
    """Almgren–Chriss's fraction of the parent still to trade before each slice ``[K+1, N]`` (1 down to 0).

    ``x_k = sinh(kappa (K - k)) / sinh(kappa K)``, written with exponentials so a large ``kappa`` cannot
    overflow; ``kappa = 0`` is the straight line (TWAP).

    :param kappa: ``[N]`` urgency per slice, ``>= 0``
    :param n_slices: child orders K
    """
    k = np.arange(n_slices + 1)[:, None]
    kappa = np.asarray(kappa, dtype=np.float64)[None, :]
    linear = (n_slices - k) / n_slices
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        curved = (
            np.exp(-kappa * k) * -np.expm1(-2.0 * kappa * (n_slices - k)) / -np.expm1(-2.0 * kappa * n_slices)
        )
    return np.where(kappa > 0, curved, linear)


@dataclass(frozen=True)
class AlmgrenChrissExecutor(Executor):
    """Front-loaded child orders: Almgren–Chriss's optimal trajectory under the cost model's temporary impact and
    a risk penalty on the price variance of the shares still to trade.

    Per ticker, with the slice's expected volume ``V = ADV / K`` and the temporary impact linearised at one share,
    ``eta = temporary(1 / V, sigma)`` per share as a fraction of price (exact for the linear impact model), the
    variance per slice ``sigma^2 / K`` and ``kappa_tilde^2 = lambda * price * sigma^2 / K / eta``, ``cosh(kappa) = 1 +
    kappa_tilde^2 / 2``. No impact (``eta = 0``) trades everything at the first slice.

    :param risk_aversion: ``lambda`` per unit of currency (Almgren and Chriss's example uses ``1e-6``)
    :param slices: child orders per parent
    """

    risk_aversion: float = 1e-6
    slices: int = 13
    name: str = "almgren_chriss"

    def __post_init__(self) -> None:
        if not self.risk_aversion >= 0:
            raise ValueError(f"risk_aversion must be non-negative, got {self.risk_aversion!r}")
        if self.slices < 1:
            raise ValueError(f"slices must be a positive integer, got {self.slices!r}")

    def kappa(self, session: SessionPlan, n_slices: int) -> np.ndarray:
        """The urgency ``[N]`` per slice of every ticker."""
        slice_volume = np.asarray(session.adv, dtype=np.float64) / n_slices
        unit = np.divide(1.0, slice_volume, out=np.ones_like(slice_volume), where=slice_volume > 0)
        eta = np.asarray(session.impact.temporary(unit, session.sigma), dtype=np.float64)
        variance = np.square(session.sigma) / n_slices
        ratio = self.risk_aversion * session.price * variance
        kappa_tilde_sq = np.divide(ratio, eta, out=np.full_like(eta, np.inf), where=eta > 0)
        kappa_tilde_sq = np.where((eta > 0) | (ratio > 0), kappa_tilde_sq, 0.0)
        return np.arccosh(1.0 + 0.5 * kappa_tilde_sq)

    def plan(self, session: SessionPlan) -> np.ndarray:
        bars = slice_bars(session.n_bars, self.slices)
        remaining = almgren_chriss_holdings(self.kappa(session, len(bars)), len(bars))
        return cumulative_plan(session.n_bars, bars, remaining[:-1] - remaining[1:])


def default_executors() -> tuple[Executor, ...]:
    """The comparison's executors: immediate, TWAP, VWAP and Almgren–Chriss, each at its defaults."""
    return (ImmediateExecutor(), TwapExecutor(), VwapExecutor(), AlmgrenChrissExecutor())


__all__ = [
    "AlmgrenChrissExecutor",
    "Executor",
    "ImmediateExecutor",
    "SessionPlan",
    "TwapExecutor",
    "VwapExecutor",
    "almgren_chriss_holdings",
    "cumulative_plan",
    "default_executors",
    "slice_bars",
    "volume_profile",
]
