"""Causal market statistics of bars and quotes: trailing means, ADV, volatility and bid-ask spread estimators.

Everything here is vectorised numpy over ``[T, N]`` arrays (time on axis 0) and strictly causal: row ``t`` only
uses rows ``<= t``, so an estimate known at a decision never peeks ahead. The cost model
(:mod:`trading_core.market.costs`, which re-exports these) and the microstructure features
(:mod:`trading_core.features.microstructure`) share them, so both compute the very same numbers.

References:

- Corwin, S. A. and Schultz, P. (2012). A Simple Way to Estimate Bid-Ask Spreads from Daily High and Low
  Prices. The Journal of Finance 67(2), 719-760.
- Abdi, F. and Ranaldo, A. (2017). A Simple Estimation of Bid-Ask Spreads from Daily Close, High, and Low
  Prices. The Review of Financial Studies 30(12), 4437-4480.
"""

from __future__ import annotations

import math

import numpy as np


def require_non_negative(**values: float | None) -> None:
    """Refuse negative or NaN parameters.

    :param values: parameter name to value; ``None`` values are not checked
    :raises ValueError: naming the first offending parameter
    """
    for name, value in values.items():
        # `not value >= 0` also rejects NaN.
        if value is not None and not value >= 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")


# ----------------------------------------------------------------------------------------------------------
# Trailing market statistics
# ----------------------------------------------------------------------------------------------------------


def _check_window(window: int) -> None:
    if int(window) != window or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")


def _trailing_sum(values: np.ndarray, window: int) -> np.ndarray:
    """Sum over rows ``t-window+1 .. t`` along axis 0 from one cumulative sum: O(T) whatever the window."""
    cumulative = np.cumsum(values, axis=0)
    total = cumulative.copy()
    total[window:] -= cumulative[:-window]
    return total


def _trailing_sum_count(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trailing sum and count of the finite entries, and the zero-filled values the sum was taken over."""
    finite = np.isfinite(values)
    filled = np.where(finite, values, 0.0)
    return _trailing_sum(filled, window), _trailing_sum(finite.astype(np.float64), window), filled


def trailing_mean(values: np.ndarray, window: int, *, empty: float = 0.0) -> np.ndarray:
    """Causal rolling mean along axis 0 over the last ``window`` rows, using as many rows as exist.

    Matches ``pandas.DataFrame.rolling(window, min_periods=1).mean()``: non-finite entries (NaN, ±inf) are
    skipped. Where the window holds no finite entry, pandas gives NaN; this returns ``empty`` instead.

    :param values: array ``[T, ...]``, time on axis 0
    :param window: number of trailing rows, including the current one
    :param empty: value for windows without a single finite entry
    :return: array of the same shape as ``values``
    """
    _check_window(window)
    values = np.asarray(values, dtype=np.float64)
    total, count, _ = _trailing_sum_count(values, window)
    mean = np.divide(total, count, out=np.full_like(total, empty), where=count > 0)
    return mean


def trailing_adv(volume: np.ndarray, window: int = 20) -> np.ndarray:
    """Average daily volume in shares over the trailing ``window`` bars, today's bar included.

    The first bars average the bars that exist (row 0 is its own volume). Missing volumes are skipped; a
    window without any volume gives 0.0, which :meth:`CostModel.execute` treats as no liquidity
    (participation 1.0) rather than free trading.

    :param volume: traded shares ``[T, N]``
    :param window: number of trailing bars
    :return: ADV ``[T, N]``, ``>= 0``
    """
    # Cumulative-sum differences can leave a tiny negative remainder after large volumes; volume cannot be.
    return np.maximum(trailing_mean(volume, window, empty=0.0), 0.0)


def trailing_volatility(close: np.ndarray, window: int = 20, *, fallback: float = 0.0) -> np.ndarray:
    """Sample standard deviation (``ddof=1``) of the daily simple returns over the trailing ``window`` returns.

    Row ``t`` uses the returns ``close[s] / close[s-1] - 1`` for ``s`` in ``t-window+1 .. t``; the return into
    a bar with a missing or non-positive close on either side is skipped. Rows with fewer than two returns in
    their window (always rows 0 and 1) get ``fallback``: back-filling the first real estimate would leak the
    future into the first decisions. With the default 0.0 there is no volatility-driven impact until two
    returns exist.

    :param close: closes ``[T, N]``
    :param window: number of trailing returns
    :param fallback: value for rows without two returns
    :return: daily return volatility ``[T, N]``, ``>= 0``
    """
    _check_window(window)
    close = np.asarray(close, dtype=np.float64)
    returns = np.full_like(close, np.nan)
    usable = np.isfinite(close) & (close > 0)
    pair = usable[1:] & usable[:-1]
    np.divide(close[1:], close[:-1], out=returns[1:], where=pair)
    returns[1:][pair] -= 1.0
    total, count, filled = _trailing_sum_count(returns, window)
    squares = _trailing_sum(filled * filled, window)
    enough = count >= 2
    safe_count = np.where(enough, count, 2.0)
    variance = (squares - total * total / safe_count) / (safe_count - 1.0)
    # Sum-of-squares minus squared-sum can round to a hair below zero for (near) constant returns.
    return np.where(enough, np.sqrt(np.maximum(variance, 0.0)), fallback)


# ----------------------------------------------------------------------------------------------------------
# Half-spread estimators
# ----------------------------------------------------------------------------------------------------------


def fixed_half_spread(shape: tuple[int, ...], bps: float) -> np.ndarray:
    """A constant spread.

    :param shape: output shape, usually ``(T, N)``
    :param bps: the FULL bid-ask spread in basis points; half of it is returned
    :return: half-spread as a fraction of price
    """
    require_non_negative(bps=bps)
    return np.full(shape, 0.5 * bps * 1e-4)


def quote_half_spread(bid: np.ndarray, ask: np.ndarray) -> np.ndarray:
    """Half the quoted spread relative to the mid price: ``(ask - bid) / (ask + bid)``.

    Crossed quotes (``ask < bid``) give 0.0. Missing or non-positive quotes give NaN: there is no sensible
    value to invent, so fill those (e.g. forward or with :func:`fixed_half_spread`) before simulating.

    :param bid: bid prices
    :param ask: ask prices, same shape as ``bid``
    :return: half-spread as a fraction of the mid price
    """
    bid = np.asarray(bid, dtype=np.float64)
    ask = np.asarray(ask, dtype=np.float64)
    valid = np.isfinite(bid) & np.isfinite(ask) & (bid > 0) & (ask > 0)
    half = np.full(np.broadcast_shapes(bid.shape, ask.shape), np.nan)
    np.divide(ask - bid, ask + bid, out=half, where=valid)
    return np.where(valid, np.maximum(half, 0.0), np.nan)


_CS_K = 3.0 - 2.0 * math.sqrt(2.0)


def corwin_schultz_half_spread(
    high: np.ndarray, low: np.ndarray, window: int = 20, fallback_bps: float = 10.0
) -> np.ndarray:
    """Corwin & Schultz (2012) high-low spread estimator, made causal.

    The two-day estimate at row ``t`` uses bars ``t-1`` and ``t`` (the paper pairs ``t`` with ``t+1``, which
    would look one bar ahead)::

        beta  = ln(H[t-1] / L[t-1])^2 + ln(H[t] / L[t])^2
        gamma = ln(max(H[t-1], H[t]) / min(L[t-1], L[t]))^2
        alpha = (sqrt(2 beta) - sqrt(beta)) / (3 - 2 sqrt 2) - sqrt(gamma / (3 - 2 sqrt 2))
        S     = 2 (e^alpha - 1) / (1 + e^alpha)

    Negative two-day estimates are set to 0, as in the paper, and then averaged over the last ``window``
    rows (``t-window+1 .. t``, as many as exist). No overnight-return adjustment is applied. Two-day estimates
    from missing or non-positive prices are skipped; rows without any estimate (row 0) get ``fallback_bps``.

    :param high: bar highs ``[T, N]``
    :param low: bar lows ``[T, N]``
    :param window: number of two-day estimates averaged
    :param fallback_bps: FULL spread in basis points for rows without an estimate
    :return: half-spread as a fraction of price ``[T, N]``, ``>= 0`` and never NaN
    """
    _check_window(window)
    require_non_negative(fallback_bps=fallback_bps)
    high = np.asarray(high, dtype=np.float64)
    low = np.asarray(low, dtype=np.float64)
    spread = np.full(np.broadcast_shapes(high.shape, low.shape), np.nan)
    if spread.shape[0] > 1:
        spread[1:] = corwin_schultz_two_bar_spread(high[:-1], low[:-1], high[1:], low[1:])
    return 0.5 * trailing_mean(spread, window, empty=fallback_bps * 1e-4)


def corwin_schultz_two_bar_spread(
    high_prev: np.ndarray, low_prev: np.ndarray, high: np.ndarray, low: np.ndarray
) -> np.ndarray:
    """The FULL two-bar Corwin–Schultz spread of the pair (previous bar, bar), element-wise.

    The building block of :func:`corwin_schultz_half_spread` (see its formula), shared with the streaming
    features so both compute the very same numbers. It is known at the later bar's end.

    :param high_prev: highs of the earlier bar
    :param low_prev: lows of the earlier bar
    :param high: highs of the later bar
    :param low: lows of the later bar
    :return: spread as a fraction of price, ``>= 0`` (negative estimates set to 0); NaN from bad prices
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        beta = np.log(high / low) ** 2 + np.log(high_prev / low_prev) ** 2
        gamma = np.log(np.maximum(high, high_prev) / np.minimum(low, low_prev)) ** 2
        alpha = (np.sqrt(2.0 * beta) - np.sqrt(beta)) / _CS_K - np.sqrt(gamma / _CS_K)
        # 2 (e^a - 1) / (1 + e^a) == 2 tanh(a / 2), which cannot overflow.
        two_day = 2.0 * np.tanh(0.5 * alpha)
    # Non-finite estimates (bad prices) stay NaN, so a trailing mean skips them.
    return np.where(np.isfinite(two_day), np.maximum(two_day, 0.0), np.nan)


def abdi_ranaldo_pair_term(
    high_prev: np.ndarray,
    low_prev: np.ndarray,
    close_prev: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
) -> np.ndarray:
    """One pair's term ``(c[t-1] - eta[t-1]) (c[t-1] - eta[t])`` of the Abdi–Ranaldo estimator, element-wise.

    ``c`` is the log close and ``eta = (log high + log low) / 2`` the log mid-range. The paper indexes the pair
    ``(t, t+1)`` at ``t``; it needs bar ``t+1``'s high and low, so here the term is stamped at the LATER bar:
    it is known only once that bar has ended.

    :param high_prev: highs of the earlier bar
    :param low_prev: lows of the earlier bar
    :param close_prev: closes of the earlier bar
    :param high: highs of the later bar
    :param low: lows of the later bar
    :return: the product; NaN where a price is missing or non-positive
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        close_log = np.log(close_prev)
        mid_prev = 0.5 * (np.log(high_prev) + np.log(low_prev))
        mid = 0.5 * (np.log(high) + np.log(low))
        term = (close_log - mid_prev) * (close_log - mid)
    return np.where(np.isfinite(term), term, np.nan)


def abdi_ranaldo_half_spread_of_mean(mean_term: np.ndarray) -> np.ndarray:
    """Half of ``s = sqrt(max(4 E[term], 0))`` from the mean of :func:`abdi_ranaldo_pair_term` values.

    :param mean_term: the averaged pair terms (NaN stays NaN)
    :return: half-spread as a fraction of price
    """
    return 0.5 * np.sqrt(np.maximum(4.0 * mean_term, 0.0))


def abdi_ranaldo_half_spread(
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    window: int = 20,
    fallback_bps: float = 10.0,
) -> np.ndarray:
    """Abdi & Ranaldo (2017) close-high-low spread estimator, made causal.

    With ``c`` the log close and ``eta = (log H + log L) / 2``, the paper's estimate is
    ``s^2 = 4 E[(c[t] - eta[t]) (c[t] - eta[t+1])]`` and ``s = sqrt(max(s^2, 0))``. The pair ``(t, t+1)``
    needs bar ``t+1``'s range, so row ``t`` here averages only the pairs ``(s-1, s)`` for ``s`` in
    ``t-window+1 .. t`` (as many as exist): the latest pair is ``(t-1, t)``, and no row ever reads a later bar.
    The terms are averaged first and the mean clipped at 0 (the paper's "monthly" estimator, not per-pair
    clipping as :func:`corwin_schultz_half_spread` does). Pairs with missing or non-positive prices are
    skipped; rows without any pair (row 0) get ``fallback_bps``.

    :param high: bar highs ``[T, N]``
    :param low: bar lows ``[T, N]``
    :param close: bar closes ``[T, N]``
    :param window: number of pair terms averaged
    :param fallback_bps: FULL spread in basis points for rows without a pair
    :return: half-spread as a fraction of price ``[T, N]``, ``>= 0`` and never NaN
    """
    _check_window(window)
    require_non_negative(fallback_bps=fallback_bps)
    high = np.asarray(high, dtype=np.float64)
    low = np.asarray(low, dtype=np.float64)
    close = np.asarray(close, dtype=np.float64)
    terms = np.full(np.broadcast_shapes(high.shape, low.shape, close.shape), np.nan)
    if terms.shape[0] > 1:
        terms[1:] = abdi_ranaldo_pair_term(high[:-1], low[:-1], close[:-1], high[1:], low[1:])
    mean = trailing_mean(terms, window, empty=np.nan)
    half = abdi_ranaldo_half_spread_of_mean(mean)
    return np.where(np.isfinite(half), half, 0.5 * fallback_bps * 1e-4)
