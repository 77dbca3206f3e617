"""Streaming features: the values of :func:`trading_core.features.batch.build_features`, one bar per ticker at a time.

The live loop receives one bar per ticker per date and must decide within milliseconds, using the very feature
values the agent was trained on. :class:`StreamingFeatures` keeps each indicator's state in numpy arrays across
tickers and advances it by one date per :meth:`~StreamingFeatures.update` (no pandas, no stockstats call),
repeating the batch pipeline's arithmetic step for step, so on real data the values equal the batch ones bit for
bit (tests allow 1e-9 relative):

* stockstats' EMAs and SMMAs are pandas' ``ewm(adjust=True)`` means, and its ``min_periods=1`` rolling means and
  standard deviations are pandas' online (Kahan-compensated, add-one-remove-one) rolling sums and Welford
  variances; their recurrences are mirrored here, constant-window special cases included;
* FinRL's turbulence is the squared Mahalanobis distance of a date's close-to-close returns from the previous 252
  panel dates' returns (their mean, and the pseudo-inverse of their sample covariance), 0 for the first 252 dates
  and for the first two positive values; updated per date with numpy on the trailing window.

Warm-up: the row of date t is the row ``build_features(bars up to t)`` gives, and :meth:`~StreamingFeatures.
update` returns ``None`` for a date that run drops (an indicator still NaN, or inside CCI's first window, which
stockstats zero-fills on longer data). On panels shorter than 252 dates both give turbulence 0.

Missing tickers: the stream mirrors ``build_features(balanced_panel(bars))``
(:func:`trading_core.features.batch.balanced_panel` keeps only dates on which every ticker has a bar): a date
missing any ticker's bar is skipped as if it never happened (no indicator window, average, turbulence history or
date count moves) and ``update`` returns ``None``. ``build_features`` itself keeps such dates for the other
tickers (ragged universes); the stream does not follow it there yet. Bars of tickers outside the configured ones
are ignored.

Parity holds for bars fed as the batch sees them: one call per date, dates strictly increasing, each date's
bars complete in that one call. VIX (optional, as in ``build_features``) is the latest close recorded at or before
each date, like the batch's backward ``merge_asof``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from trading_core.data.schema import BASE_COLUMNS
from trading_core.features.batch import TURBULENCE_WINDOW, settled_turbulence, turbulence_of_day
from trading_core.features.finrl_adapter import FINRL_INDICATORS
from trading_core.regimes.model import RegimeModel, RegimeStream, regime_columns

BAR_FIELDS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
SNAPSHOT_VERSION = 1

# stockstats' defaults (``_dft_windows`` and ``StockDataFrame`` options) for names given without a window.
_MACD_WINDOWS = (12, 26, 9)
_BOLL_WINDOW = 20
_BOLL_STD_TIMES = 2
_DEFAULT_WINDOWS = {"rsi": 14, "cci": 14, "dx": 14}
_WINDOWED = re.compile(r"^(rsi|cci|dx)(?:_(\d+))?$")
_COLUMN_AVERAGE = re.compile(r"^(open|high|low|close|volume)_(\d+)_(sma|ema)$")
SUPPORTED_INDICATORS = (
    "macd, macds, macdh, boll, boll_ub, boll_lb, rsi[_N], cci[_N], dx[_N], "
    "{open,high,low,close,volume}_N_sma, {open,high,low,close,volume}_N_ema"
)


class _Stateful:
    """Exports and restores the attributes named in ``_state_fields`` (copying arrays and lists)."""

    _state_fields: tuple[str, ...] = ()

    def state(self) -> dict[str, Any]:
        exported: dict[str, Any] = {}
        for name in self._state_fields:
            value = getattr(self, name)
            if isinstance(value, _Stateful):
                exported[name] = value.state()
            elif isinstance(value, np.ndarray | list):
                exported[name] = value.copy()
            else:
                exported[name] = value
        return exported

    def load_state(self, state: Mapping[str, Any]) -> None:
        for name in self._state_fields:
            current = getattr(self, name)
            if isinstance(current, _Stateful):
                current.load_state(state[name])
            elif isinstance(state[name], np.ndarray | list):
                setattr(self, name, state[name].copy())
            else:
                setattr(self, name, state[name])


class _Trailing(_Stateful):
    """The last ``capacity`` values of one series per ticker, kept contiguous in a doubled buffer.

    :param n_tickers: number of tickers (rows)
    :param capacity: longest window read back
    """

    def __init__(self, n_tickers: int, capacity: int) -> None:
        self.capacity = capacity
        self.buffer = np.zeros((n_tickers, 2 * capacity))
        self.end = 0
        self.count = 0

    def push(self, values: np.ndarray) -> None:
        """Append one value per ticker.

        :param values: ``(n_tickers,)``
        """
        if self.end == self.buffer.shape[1]:
            # Moving the newest values to the front once every ``capacity`` pushes keeps slices contiguous
            # at amortised O(1) cost.
            keep = self.capacity - 1
            self.buffer[:, :keep] = self.buffer[:, self.end - keep : self.end]
            self.end = keep
        self.buffer[:, self.end] = values
        self.end += 1
        self.count += 1

    def last(self, window: int) -> np.ndarray:
        """The last ``min(window, values pushed)`` values per ticker, oldest first (a view).

        :param window: number of values, at most ``capacity``
        """
        size = min(window, self.count)
        return self.buffer[:, self.end - size : self.end]

    def state(self) -> dict[str, Any]:
        return {"values": self.last(self.capacity).copy(), "count": self.count}

    def load_state(self, state: Mapping[str, Any]) -> None:
        values = np.asarray(state["values"], dtype=np.float64)
        self.buffer[:, : values.shape[1]] = values
        self.end = values.shape[1]
        self.count = int(state["count"])


class _RollingMean(_Stateful):
    """pandas' ``rolling(window, min_periods=1).mean()`` advanced one value per ticker at a time.

    pandas keeps a Kahan-compensated running sum, adding the value entering the window and removing the one
    leaving it, and returns the repeated value itself when the window holds only that value. This mirrors its
    steps (``roll_mean`` in ``pandas/_libs/window/aggregations.pyx``), so results equal the batch ones bit for
    bit, in O(1) per date.

    :param n_tickers: number of tickers
    :param window: window length in dates
    """

    _state_fields = (
        "values",
        "nobs",
        "total",
        "compensation_add",
        "compensation_remove",
        "negative_count",
        "same_count",
        "previous_value",
    )

    def __init__(self, n_tickers: int, window: int) -> None:
        self.window = window
        self.values = _Trailing(n_tickers, window)
        self.nobs = 0
        self.total = np.zeros(n_tickers)
        self.compensation_add = np.zeros(n_tickers)
        self.compensation_remove = np.zeros(n_tickers)
        self.negative_count = np.zeros(n_tickers, dtype=np.int64)
        self.same_count = np.zeros(n_tickers, dtype=np.int64)
        self.previous_value = np.zeros(n_tickers)

    def update(self, values: np.ndarray) -> np.ndarray:
        """Add one value per ticker (dropping the one that leaves the window) and return the window means.

        :param values: ``(n_tickers,)``, finite
        """
        if self.values.count == 0:
            self.previous_value = np.array(values, dtype=np.float64)
        if self.values.count >= self.window:
            leaving = self.values.last(self.window)[:, 0]
            self.nobs -= 1
            addend = -leaving - self.compensation_remove
            total = self.total + addend
            self.compensation_remove = total - self.total - addend
            self.total = total
            self.negative_count = self.negative_count - np.signbit(leaving)
        self.values.push(values)
        self.nobs += 1
        addend = values - self.compensation_add
        total = self.total + addend
        self.compensation_add = total - self.total - addend
        self.total = total
        self.negative_count = self.negative_count + np.signbit(values)
        self.same_count = np.where(values == self.previous_value, self.same_count + 1, 1)
        self.previous_value = np.array(values, dtype=np.float64)
        mean = self.total / self.nobs
        mean = np.where((self.negative_count == 0) & (mean < 0), 0.0, mean)
        mean = np.where((self.negative_count == self.nobs) & (mean > 0), 0.0, mean)
        return np.where(self.same_count >= self.nobs, self.previous_value, mean)


class _RollingStd(_Stateful):
    """pandas' ``rolling(window, min_periods=1).std()`` (ddof=1) advanced one value per ticker at a time.

    Mirrors pandas' ``roll_var``: Welford's online mean and sum of squared deviations with Kahan-compensated
    means, 0 for a window of one repeated value, NaN for a single value.

    :param n_tickers: number of tickers
    :param window: window length in dates
    """

    _state_fields = (
        "values",
        "nobs",
        "mean",
        "squared_deviations",
        "compensation_add",
        "compensation_remove",
        "same_count",
        "previous_value",
    )

    def __init__(self, n_tickers: int, window: int) -> None:
        self.window = window
        self.values = _Trailing(n_tickers, window)
        self.nobs = 0
        self.mean = np.zeros(n_tickers)
        self.squared_deviations = np.zeros(n_tickers)
        self.compensation_add = np.zeros(n_tickers)
        self.compensation_remove = np.zeros(n_tickers)
        self.same_count = np.zeros(n_tickers, dtype=np.int64)
        self.previous_value = np.zeros(n_tickers)

    def update(self, values: np.ndarray) -> np.ndarray:
        """Add one value per ticker (dropping the one that leaves the window) and return the window stds.

        :param values: ``(n_tickers,)``, finite
        """
        if self.values.count == 0:
            self.previous_value = np.array(values, dtype=np.float64)
        if self.values.count >= self.window:
            leaving = self.values.last(self.window)[:, 0]
            self.nobs -= 1
            if self.nobs:
                previous_mean = self.mean - self.compensation_remove
                shifted = leaving - self.compensation_remove
                delta = shifted - self.mean
                self.compensation_remove = delta + self.mean - shifted
                self.mean = self.mean - delta / self.nobs
                self.squared_deviations = self.squared_deviations - (leaving - previous_mean) * (
                    leaving - self.mean
                )
            else:
                self.mean = np.zeros_like(self.mean)
                self.squared_deviations = np.zeros_like(self.squared_deviations)
        self.values.push(values)
        self.nobs += 1
        self.same_count = np.where(values == self.previous_value, self.same_count + 1, 1)
        self.previous_value = np.array(values, dtype=np.float64)
        previous_mean = self.mean - self.compensation_add
        shifted = values - self.compensation_add
        delta = shifted - self.mean
        self.compensation_add = delta + self.mean - shifted
        self.mean = self.mean + delta / self.nobs
        self.squared_deviations = self.squared_deviations + (values - previous_mean) * (values - self.mean)
        if self.nobs < 2:
            return np.full_like(self.mean, np.nan)
        variance = np.where(self.same_count >= self.nobs, 0.0, self.squared_deviations / (self.nobs - 1.0))
        return np.sqrt(np.maximum(variance, 0.0))


class _Ewm(_Stateful):
    """pandas' ``ewm(..., adjust=True, ignore_na=False).mean()`` advanced by one observation per ticker.

    The recurrence is pandas' own (weights of past observations decay, the new one weighs 1), including its
    skip when the new value equals the current mean, so values equal the batch ones bit for bit.

    :param n_tickers: number of tickers
    :param center_of_mass: pandas' ``com``; see :meth:`from_span` and :meth:`from_alpha`
    """

    _state_fields = ("mean", "old_weight", "started")

    def __init__(self, n_tickers: int, center_of_mass: float) -> None:
        self.decay = 1.0 - 1.0 / (1.0 + center_of_mass)
        self.mean = np.zeros(n_tickers)
        self.old_weight = 1.0
        self.started = False

    @classmethod
    def from_span(cls, n_tickers: int, span: int) -> _Ewm:
        """EMA as stockstats' ``ema`` (``span=window``).

        :param n_tickers: number of tickers
        :param span: pandas' span
        """
        return cls(n_tickers, (span - 1) / 2)

    @classmethod
    def from_alpha(cls, n_tickers: int, alpha: float) -> _Ewm:
        """SMMA as stockstats' ``smma`` (``alpha=1/window``).

        :param n_tickers: number of tickers
        :param alpha: pandas' alpha
        """
        return cls(n_tickers, (1 - alpha) / alpha)

    def update(self, values: np.ndarray) -> np.ndarray:
        """Add one observation per ticker and return the new means (a fresh array).

        :param values: ``(n_tickers,)``, finite
        """
        if not self.started:
            self.mean = np.array(values, dtype=np.float64)
            self.started = True
            return self.mean
        self.old_weight *= self.decay
        blended = (self.old_weight * self.mean + values) / (self.old_weight + 1.0)
        self.mean = np.where(self.mean != values, blended, self.mean)
        self.old_weight += 1.0
        return self.mean


class _Bar:
    """One date's bars as arrays over the sorted tickers."""

    __slots__ = ("open", "high", "low", "close", "volume")

    def __init__(self, values: np.ndarray) -> None:
        self.open, self.high, self.low, self.close, self.volume = values

    def field(self, name: str) -> np.ndarray:
        return getattr(self, name)


class _Macd(_Stateful):
    """stockstats' MACD line, signal (``macds``) and histogram (``macdh``)."""

    _state_fields = ("short", "long", "signal")

    def __init__(self, n_tickers: int) -> None:
        short, long, signal = _MACD_WINDOWS
        self.short = _Ewm.from_span(n_tickers, short)
        self.long = _Ewm.from_span(n_tickers, long)
        self.signal = _Ewm.from_span(n_tickers, signal)

    def update(self, bar: _Bar) -> dict[str, np.ndarray]:
        line = self.short.update(bar.close) - self.long.update(bar.close)
        signal = self.signal.update(line)
        return {"macd": line, "macds": signal, "macdh": line - signal}


class _Bollinger(_Stateful):
    """stockstats' Bollinger middle band and the bands two rolling standard deviations around it."""

    _state_fields = ("middle", "std")

    def __init__(self, n_tickers: int) -> None:
        self.middle = _RollingMean(n_tickers, _BOLL_WINDOW)
        self.std = _RollingStd(n_tickers, _BOLL_WINDOW)

    def update(self, bar: _Bar) -> dict[str, np.ndarray]:
        middle = self.middle.update(bar.close)
        width = _BOLL_STD_TIMES * self.std.update(bar.close)
        return {"boll": middle, "boll_ub": middle + width, "boll_lb": middle - width}


class _Rsi(_Stateful):
    """stockstats' RSI: SMMAs of up and down close moves; 50 on the first date and when nothing moved."""

    _state_fields = ("previous_close", "up", "down")

    def __init__(self, n_tickers: int, window: int) -> None:
        self.previous_close: np.ndarray | None = None
        self.up = _Ewm.from_alpha(n_tickers, 1.0 / window)
        self.down = _Ewm.from_alpha(n_tickers, 1.0 / window)

    def update(self, bar: _Bar) -> np.ndarray:
        first = self.previous_close is None
        change = np.zeros_like(bar.close) if first else bar.close - self.previous_close
        self.previous_close = bar.close
        up = self.up.update(np.where(change > 0, change, 0.0))
        down = self.down.update(np.where(change < 0, -change, 0.0))
        total = up + down
        if first:
            return np.full_like(total, 50.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(total != 0, 100 * (up / total), 50.0)


class _Cci(_Stateful):
    """stockstats' CCI of the typical price; NaN until ``window`` dates exist (its mean deviation is NaN)."""

    _state_fields = ("typical_mean",)

    def __init__(self, n_tickers: int, window: int) -> None:
        self.window = window
        self.typical_mean = _RollingMean(n_tickers, window)

    def update(self, bar: _Bar) -> np.ndarray:
        typical_price = (bar.close + bar.high + bar.low) / 3.0
        moving_average = self.typical_mean.update(typical_price)
        if self.typical_mean.values.count < self.window:
            return np.full_like(typical_price, np.nan)
        # stockstats' mean absolute deviation is a plain two-pass numpy mean over the window.
        window = self.typical_mean.values.last(self.window)
        mean_deviation = np.abs(window - window.mean(axis=1)[:, None]).mean(axis=1)
        divisor = 0.015 * mean_deviation
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(divisor != 0, (typical_price - moving_average) / divisor, 0.0)


class _Dx(_Stateful):
    """stockstats' DX: +DI and -DI from SMMAs of directional moves and of the true range."""

    _state_fields = ("previous", "plus_move", "minus_move", "true_range")

    def __init__(self, n_tickers: int, window: int) -> None:
        self.window = window
        self.previous: np.ndarray | None = None  # rows: high, low, close of the previous date
        self.plus_move = _Ewm.from_alpha(n_tickers, 1.0 / window)
        self.minus_move = _Ewm.from_alpha(n_tickers, 1.0 / window)
        self.true_range = _Ewm.from_alpha(n_tickers, 1.0 / window)

    def update(self, bar: _Bar) -> np.ndarray:
        if self.previous is None:
            # stockstats' first date: no move, and the previous close is the date's own close.
            high_move = np.zeros_like(bar.high)
            low_move = np.zeros_like(bar.low)
            previous_close = bar.close
        else:
            high_move = bar.high - self.previous[0]
            low_move = -(bar.low - self.previous[1])
            previous_close = self.previous[2]
        self.previous = np.stack([bar.high, bar.low, bar.close])
        plus = np.where((high_move > 0) & (high_move > low_move), high_move, 0.0)
        minus = np.where((low_move > 0) & (low_move > high_move), low_move, 0.0)
        if self.window > 1:
            plus = self.plus_move.update(plus)
            minus = self.minus_move.update(minus)
        true_range = np.maximum(
            bar.high - bar.low,
            np.maximum(np.abs(bar.high - previous_close), np.abs(bar.low - previous_close)),
        )
        average_range = self.true_range.update(np.nan_to_num(true_range))
        with np.errstate(divide="ignore", invalid="ignore"):
            plus_di = plus / average_range * 100
            minus_di = minus / average_range * 100
            divisor = plus_di + minus_di
            return np.where(divisor != 0, np.abs(plus_di - minus_di) / divisor, 0.0) * 100


class _ColumnSma(_Stateful):
    """stockstats' ``<column>_<N>_sma``: rolling mean with ``min_periods=1``."""

    _state_fields = ("average",)

    def __init__(self, n_tickers: int, column: str, window: int) -> None:
        self.column = column
        self.average = _RollingMean(n_tickers, window)

    def update(self, bar: _Bar) -> np.ndarray:
        return self.average.update(bar.field(self.column))


class _ColumnEma(_Stateful):
    """stockstats' ``<column>_<N>_ema``: pandas EMA with ``span=N``."""

    _state_fields = ("average",)

    def __init__(self, n_tickers: int, column: str, window: int) -> None:
        self.column = column
        self.average = _Ewm.from_span(n_tickers, window)

    def update(self, bar: _Bar) -> np.ndarray:
        return self.average.update(bar.field(self.column))


_Indicator = _Macd | _Bollinger | _Rsi | _Cci | _Dx | _ColumnSma | _ColumnEma


def _indicator_key(name: str) -> tuple[tuple[Any, ...], str | None]:
    """Which indicator computes ``name`` (a hashable key) and which of its outputs it is (None: the only one)."""
    if name in ("macd", "macds", "macdh"):
        return ("macd",), name
    if name in ("boll", "boll_ub", "boll_lb"):
        return ("boll",), name
    windowed = _WINDOWED.match(name)
    if windowed:
        kind, window = windowed.group(1), windowed.group(2)
        return (kind, int(window) if window else _DEFAULT_WINDOWS[kind]), None
    average = _COLUMN_AVERAGE.match(name)
    if average:
        return (average.group(3), average.group(1), int(average.group(2))), None
    raise ValueError(f"indicator {name!r} has no streaming implementation; supported: {SUPPORTED_INDICATORS}")


def _make_indicator(key: tuple[Any, ...], n_tickers: int) -> _Indicator:
    kind = key[0]
    if kind == "macd":
        return _Macd(n_tickers)
    if kind == "boll":
        return _Bollinger(n_tickers)
    window = key[-1]
    if window < 1:
        raise ValueError(f"indicator windows must be at least 1, got {key}")
    if kind == "rsi":
        return _Rsi(n_tickers, window)
    if kind == "cci":
        return _Cci(n_tickers, window)
    if kind == "dx":
        return _Dx(n_tickers, window)
    if kind == "sma":
        return _ColumnSma(n_tickers, key[1], window)
    return _ColumnEma(n_tickers, key[1], window)


class _Turbulence(_Stateful):
    """FinRL's turbulence index (``FeatureEngineer.calculate_turbulence``) advanced one panel date at a time.

    Only the trailing returns and counters live here; each date's arithmetic is the batch's own
    (:func:`~trading_core.features.batch.turbulence_of_day` and
    :func:`~trading_core.features.batch.settled_turbulence`).
    """

    _state_fields = ("returns", "previous_close", "dates_seen", "positive_count")

    def __init__(self, n_tickers: int) -> None:
        # Returns of the previous 252 panel dates: the first date has none (pct_change gives NaN, which FinRL
        # drops from the history window), so the window holds 251 returns on date 252 and 252 afterwards.
        self.returns = _Trailing(n_tickers, TURBULENCE_WINDOW)
        self.previous_close: np.ndarray | None = None
        self.dates_seen = 0
        self.positive_count = 0

    def update(self, close: np.ndarray) -> float:
        """Consume one date's closes and return its turbulence.

        :param close: ``(n_tickers,)`` closes of the date
        """
        today = None if self.previous_close is None else close / self.previous_close - 1
        value = 0.0
        if self.dates_seen >= TURBULENCE_WINDOW:
            # The buffer holds tickers as rows; the helper takes dates as rows (a transposed view, no copy).
            distance = turbulence_of_day(self.returns.last(TURBULENCE_WINDOW).T, today)
            value, self.positive_count = settled_turbulence(distance, self.positive_count)
        if today is not None:
            self.returns.push(today)
        self.previous_close = close
        self.dates_seen += 1
        return value


class _RecentRows(_Stateful):
    """The feature rows of the last ``capacity`` emitted dates (a doubled ring buffer of matrices)."""

    _state_fields = ("dates", "rows", "end", "count")

    def __init__(self, capacity: int, n_tickers: int, n_columns: int) -> None:
        self.capacity = capacity
        self.dates = np.zeros(2 * capacity, dtype=np.int64)
        self.rows = np.zeros((2 * capacity, n_tickers, n_columns))
        self.end = 0
        self.count = 0

    def push(self, date_ns: int, rows: np.ndarray) -> None:
        if self.end == len(self.dates):
            keep = self.capacity - 1
            self.dates[:keep] = self.dates[self.end - keep : self.end]
            self.rows[:keep] = self.rows[self.end - keep : self.end]
            self.end = keep
        self.dates[self.end] = date_ns
        self.rows[self.end] = rows
        self.end += 1
        self.count += 1

    def last(self, window: int) -> tuple[np.ndarray, np.ndarray]:
        size = min(window, self.count, self.capacity)
        return self.dates[self.end - size : self.end], self.rows[self.end - size : self.end]


class _LatestVix(_Stateful):
    """The latest VIX close known at a date, as ``build_features``' backward ``merge_asof`` joins it.

    Observations wait in a queue until a panel date reaches their date, so a VIX value dated after the date
    being computed is never used; queued values older than the last consumed date are folded into ``current``.
    """

    _state_fields = ("queued_dates", "queued_values", "current", "last_recorded")

    def __init__(self) -> None:
        self.queued_dates: list[int] = []
        self.queued_values: list[float] = []
        self.current = float("nan")
        self.last_recorded: int | None = None

    def record(self, date_ns: int, value: float) -> None:
        if self.last_recorded is not None and date_ns <= self.last_recorded:
            raise ValueError("VIX observations must have increasing dates")
        self.queued_dates.append(date_ns)
        self.queued_values.append(float(value))
        self.last_recorded = date_ns

    def at(self, date_ns: int) -> float:
        """The last recorded value dated at or before ``date_ns`` (NaN when none)."""
        known = 0
        while known < len(self.queued_dates) and self.queued_dates[known] <= date_ns:
            known += 1
        if known:
            self.current = self.queued_values[known - 1]
            del self.queued_dates[:known], self.queued_values[:known]
        return self.current


@dataclass(frozen=True)
class FeatureWindow:
    """Feature rows of the last dates as arrays: what :meth:`StreamingFeatures.latest_frame` lays out as a frame,
    without building one (a live decision reads it in microseconds).

    :param dates_ns: ``(dates,)`` int64 nanoseconds since the epoch (UTC), oldest first
    :param tickers: the row order of each date, sorted
    :param columns: the names of the last axis of ``rows``
    :param rows: ``(dates, tickers, columns)`` float64; NaN where a frame given to :meth:`from_frame` lacks the
        (date, ticker) row (a stream's rows are always complete)
    """

    dates_ns: np.ndarray
    tickers: tuple[str, ...]
    columns: tuple[str, ...]
    rows: np.ndarray

    @property
    def n_dates(self) -> int:
        return len(self.dates_ns)

    def last(self, n_dates: int) -> FeatureWindow:
        """The last ``n_dates`` dates (all of them when fewer), as views."""
        start = max(self.n_dates - n_dates, 0)
        return FeatureWindow(self.dates_ns[start:], self.tickers, self.columns, self.rows[start:])

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, columns: Sequence[str], tickers: Sequence[str] | None = None
    ) -> FeatureWindow:
        """A long features frame as a window over its dates.

        :param frame: ``date, tic`` and ``columns``, at most one row per (date, tic)
        :param columns: the columns to keep, in order
        :param tickers: the universe, sorted (default the frame's tickers); rows of other tickers are ignored
        :raises ValueError: a column is missing, or a (date, tic) holds more than one row
        """
        missing = [c for c in ("date", "tic", *columns) if c not in frame.columns]
        if missing:
            raise ValueError(f"features frame lacks columns {missing}")
        universe = tuple(sorted(frame["tic"].unique())) if tickers is None else tuple(tickers)
        ticker_index = pd.Index(universe).get_indexer(frame["tic"])
        keep = ticker_index >= 0
        # ``.values`` keeps timezone-aware dates as UTC datetime64 (``to_numpy`` would box each into a Timestamp).
        stamps = frame["date"].values.astype("datetime64[ns]").view(np.int64)[keep]
        dates_ns, row = np.unique(stamps, return_inverse=True)
        column = ticker_index[keep]
        if len(np.unique(row * len(universe) + column)) != len(row):
            raise ValueError("features frame holds more than one row for some (date, tic)")
        values = np.empty((len(frame), len(columns)))
        for position, name in enumerate(columns):  # column by column: a sub-frame's copy costs more
            values[:, position] = frame[name].to_numpy(dtype=np.float64)
        rows = np.full((len(dates_ns), len(universe), len(columns)), np.nan)
        rows[row, column] = values[keep]
        return cls(dates_ns, universe, tuple(columns), rows)


class StreamingFeatures:
    """Incremental twin of :func:`trading_core.features.batch.build_features` for the live loop.

    :param tickers: the panel's tickers; outputs list them sorted, like ``build_features``
    :param indicators: stockstats indicator names (FinRL's by default); see ``SUPPORTED_INDICATORS``
    :param use_turbulence: add FinRL's turbulence column, as ``build_features(use_turbulence=...)``
    :param history: past long-format bars (``date, tic, open, high, low, close, volume``) replayed through the
        stream at construction, so the state is the one the batch pipeline reaches on them
    :param keep_dates: emitted dates kept for :meth:`latest_frame`
    :param use_vix: add the ``vix`` column, as ``build_features(vix=...)``: the latest VIX close dated at or
        before each date, from :meth:`record_vix` / ``update(..., vix=...)``; dates before the first one are
        dropped
    :param vix_history: VIX closes indexed by date recorded before ``history`` is replayed (with ``use_vix``)
    :param regime_model: a market regime model (``RegimeModel.to_dict()``): adds its ``p_regime_*`` columns, the
        forward filter over the equal-weight market signals of every complete date consumed (warm-up dates
        included), as ``add_regime_features`` adds them to the batch features of the same bars
    """

    def __init__(
        self,
        tickers: Sequence[str],
        indicators: Sequence[str] = FINRL_INDICATORS,
        use_turbulence: bool = True,
        history: pd.DataFrame | None = None,
        keep_dates: int = 64,
        use_vix: bool = False,
        vix_history: pd.Series | None = None,
        regime_model: Mapping[str, Any] | None = None,
    ) -> None:
        sorted_tickers = tuple(sorted(set(tickers)))
        if not sorted_tickers or len(sorted_tickers) != len(tickers):
            raise ValueError(f"tickers must be non-empty and unique, got {list(tickers)}")
        indicator_names = tuple(indicators)
        if len(set(indicator_names)) != len(indicator_names):
            raise ValueError(f"indicators must be unique, got {list(indicator_names)}")
        if keep_dates < 1:
            raise ValueError(f"keep_dates must be at least 1, got {keep_dates}")
        self._tickers = sorted_tickers
        self._ticker_labels = np.array(sorted_tickers, dtype=object)
        self._indicator_names = indicator_names
        self._use_turbulence = use_turbulence
        n_tickers = len(sorted_tickers)
        self._indicators: dict[tuple[Any, ...], _Indicator] = {}
        self._outputs: list[tuple[tuple[Any, ...], str | None]] = []
        for name in indicator_names:
            key, output = _indicator_key(name)
            if key not in self._indicators:
                self._indicators[key] = _make_indicator(key, n_tickers)
            self._outputs.append((key, output))
        if vix_history is not None and not use_vix:
            raise ValueError("vix_history needs use_vix=True")
        self._turbulence = _Turbulence(n_tickers) if use_turbulence else None
        self._vix = _LatestVix() if use_vix else None
        self._regimes = (
            RegimeStream(RegimeModel.from_dict(regime_model)) if regime_model is not None else None
        )
        self._columns = (
            *BASE_COLUMNS,
            *indicator_names,
            *(("turbulence",) if use_turbulence else ()),
            *(("vix",) if use_vix else ()),
            *(regime_columns(self._regimes.model.n_regimes) if self._regimes is not None else ()),
        )
        self._value_columns = self._columns[2:]
        self._recent = _RecentRows(keep_dates, n_tickers, len(self._value_columns))
        self._last_date: pd.Timestamp | None = None
        if vix_history is not None:
            for date, value in vix_history.sort_index().items():
                self.record_vix(date, value)
        if history is not None:
            self._replay(history)

    @property
    def tickers(self) -> tuple[str, ...]:
        """The tickers, sorted (the row order of every output)."""
        return self._tickers

    @property
    def columns(self) -> tuple[str, ...]:
        """Columns of every output frame, in ``build_features``' order."""
        return self._columns

    @property
    def value_columns(self) -> tuple[str, ...]:
        """Columns of :meth:`update_values`' matrix: OHLCV, the indicators, then turbulence and vix."""
        return self._value_columns

    @property
    def last_date(self) -> pd.Timestamp | None:
        """The last date consumed (skipped incomplete dates included)."""
        return self._last_date

    def record_vix(self, date: pd.Timestamp, value: float) -> None:
        """Record a VIX close; dates with features at or after ``date`` use it until a newer one is recorded.

        :param date: the VIX bar's date, later than every VIX date recorded before
        :param value: the VIX close
        """
        if self._vix is None:
            raise ValueError("this stream was built without use_vix")
        self._vix.record(self._date_ns(pd.Timestamp(date)), value)

    def update(
        self, date: pd.Timestamp, bars: Mapping[str, Sequence[float]], vix: float | None = None
    ) -> pd.DataFrame | None:
        """Consume one date's bars and return its feature rows, laid out as ``build_features`` lays them out.

        :param date: the bars' date, later than every date consumed before
        :param bars: ``(open, high, low, close, volume)`` per ticker
        :param vix: the VIX close of ``date``, if known (same as :meth:`record_vix` first)
        :return: one row per ticker (sorted), or None for a date ``build_features`` would not output (warm-up,
            or a ticker's bar missing)
        """
        rows = self.update_values(date, bars, vix)
        if rows is None:
            return None
        return self._frame(np.array([self._date_ns(self._last_date)]), rows[None])

    def update_values(
        self, date: pd.Timestamp, bars: Mapping[str, Sequence[float]], vix: float | None = None
    ) -> np.ndarray | None:
        """:meth:`update` without building a DataFrame: the rows as a ``(tickers, value_columns)`` matrix.

        :param date: the bars' date, later than every date consumed before
        :param bars: ``(open, high, low, close, volume)`` per ticker
        :param vix: the VIX close of ``date``, if known
        :return: float64 matrix in :attr:`value_columns` order, or None (see :meth:`update`)
        """
        date = self._checked_date(date)
        values = np.empty((len(BAR_FIELDS), len(self._tickers)))
        complete = True
        for column, ticker in enumerate(self._tickers):
            bar = bars.get(ticker)
            if bar is None:
                complete = False
                break
            values[:, column] = bar
        if complete and not np.isfinite(values).all():
            raise ValueError(f"bars of {date} hold non-finite values; validate bars before streaming them")
        if vix is not None:
            self.record_vix(date, vix)
        self._last_date = date
        if not complete:
            # balanced_panel drops the whole date: nothing of it may reach the state.
            return None
        return self._advance(date, values)

    def latest_frame(self, window: int) -> pd.DataFrame:
        """The feature rows of the last ``window`` emitted dates (fewer while fewer exist), oldest first.

        The CNN-LSTM forecaster's output at the last date needs ``config.window + 1`` dates (its first input
        date needs the previous close).

        :param window: number of dates, at most ``keep_dates``
        """
        return self._frame(*self._recent_rows(window))

    def latest_window(self, window: int) -> FeatureWindow:
        """:meth:`latest_frame` as arrays, read-only views of the stream's rows (no copy, no DataFrame): valid until
        the next :meth:`update`, which may overwrite them.

        :param window: number of dates, at most ``keep_dates``
        """
        dates, rows = self._recent_rows(window)
        dates.flags.writeable = rows.flags.writeable = False  # the stream's state: readers must not change it
        return FeatureWindow(dates, self._tickers, self._value_columns, rows)

    def _recent_rows(self, window: int) -> tuple[np.ndarray, np.ndarray]:
        if not 1 <= window <= self._recent.capacity:
            raise ValueError(f"window must be between 1 and keep_dates={self._recent.capacity}, got {window}")
        return self._recent.last(window)

    def snapshot(self) -> dict[str, Any]:
        """The whole state as a dict of builtins, numpy arrays and timestamps, which
        :mod:`trading_core.runtime.stored_json` stores exactly (see :meth:`from_snapshot`)."""
        return {
            "version": SNAPSHOT_VERSION,
            "tickers": list(self._tickers),
            "indicators": list(self._indicator_names),
            "use_turbulence": self._use_turbulence,
            "use_vix": self._vix is not None,
            "keep_dates": self._recent.capacity,
            "last_date": self._last_date,
            "indicator_states": [indicator.state() for indicator in self._indicators.values()],
            "turbulence": None if self._turbulence is None else self._turbulence.state(),
            "vix": None if self._vix is None else self._vix.state(),
            "regimes": None if self._regimes is None else self._regimes.state(),
            "recent": self._recent.state(),
        }

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any]) -> StreamingFeatures:
        """Rebuild a stream that continues exactly where :meth:`snapshot` was taken.

        :param snapshot: output of :meth:`snapshot` (possibly read back from a stored JSON document)
        """
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported snapshot version {snapshot.get('version')!r}")
        regimes = snapshot.get("regimes")  # absent from snapshots taken before regime features existed
        stream = cls(
            snapshot["tickers"],
            indicators=snapshot["indicators"],
            use_turbulence=snapshot["use_turbulence"],
            keep_dates=snapshot["keep_dates"],
            use_vix=snapshot["use_vix"],
            regime_model=None if regimes is None else regimes["model"],
        )
        if regimes is not None:
            stream._regimes = RegimeStream.from_state(regimes)
        for indicator, state in zip(stream._indicators.values(), snapshot["indicator_states"], strict=True):
            indicator.load_state(state)
        if stream._turbulence is not None:
            stream._turbulence.load_state(snapshot["turbulence"])
        if stream._vix is not None:
            stream._vix.load_state(snapshot["vix"])
        stream._recent.load_state(snapshot["recent"])
        stream._last_date = snapshot["last_date"]
        return stream

    def _checked_date(self, date: pd.Timestamp) -> pd.Timestamp:
        date = pd.Timestamp(date)
        if self._last_date is not None and date <= self._last_date:
            raise ValueError(f"dates must increase: got {date} after {self._last_date}")
        return date

    def _advance(self, date: pd.Timestamp, values: np.ndarray) -> np.ndarray | None:
        """Move every indicator one date on; return the rows unless one holds a NaN (a dropped date)."""
        bar = _Bar(values)
        rows = np.empty((len(self._tickers), len(self._value_columns)))
        rows[:, : len(BAR_FIELDS)] = values.T
        computed = {key: indicator.update(bar) for key, indicator in self._indicators.items()}
        for offset, (key, output) in enumerate(self._outputs, start=len(BAR_FIELDS)):
            result = computed[key]
            rows[:, offset] = result if output is None else result[output]
        if self._turbulence is not None:
            rows[:, len(BAR_FIELDS) + len(self._outputs)] = self._turbulence.update(bar.close)
        if self._vix is not None:
            rows[:, self._value_columns.index("vix")] = self._vix.at(self._date_ns(date))
        if self._regimes is not None:
            # Every complete date moves the filter, dropped warm-up dates too: the batch filters every date.
            probabilities = self._regimes.update(dict(zip(self._tickers, bar.close.tolist(), strict=True)))
            rows[:, len(self._value_columns) - len(probabilities) :] = probabilities
        if np.isnan(rows).any():
            return None
        self._recent.push(self._date_ns(date), rows)
        return rows

    def _replay(self, history: pd.DataFrame) -> None:
        missing = [c for c in BASE_COLUMNS if c not in history.columns]
        if missing:
            raise ValueError(f"history lacks columns {missing}")
        frame = history.loc[history["tic"].isin(self._tickers), list(BASE_COLUMNS)]
        if frame.duplicated(["date", "tic"]).any():
            raise ValueError("history holds more than one bar for some (date, tic)")
        frame_dates = pd.DatetimeIndex(pd.to_datetime(frame["date"]))
        dates = frame_dates.unique().sort_values()
        values = frame.loc[:, list(BAR_FIELDS)].to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("history holds non-finite OHLCV values; validate bars first")
        row = dates.get_indexer(frame_dates)
        column = pd.Index(self._tickers).get_indexer(frame["tic"])
        grid = np.full((len(dates), len(BAR_FIELDS), len(self._tickers)), np.nan)
        grid[row, :, column] = values
        present = np.zeros((len(dates), len(self._tickers)), dtype=bool)
        present[row, column] = True
        complete = present.all(axis=1)
        for index, date in enumerate(dates):
            self._last_date = self._checked_date(date)
            if complete[index]:
                # A copy: state keeps the last bars, and must not pin the whole history grid in memory.
                self._advance(date, grid[index].copy())

    @staticmethod
    def _date_ns(date: pd.Timestamp) -> int:
        return int(date.value)

    def _frame(self, dates_ns: np.ndarray, rows: np.ndarray) -> pd.DataFrame:
        n_tickers = len(self._tickers)
        stamps = np.repeat(dates_ns, n_tickers).view("datetime64[ns]")
        timezone = None if self._last_date is None else self._last_date.tz
        data: dict[str, Any] = {
            "date": stamps if timezone is None else pd.DatetimeIndex(stamps, tz="UTC").tz_convert(timezone),
            "tic": np.tile(self._ticker_labels, len(dates_ns)),
        }
        flat = rows.reshape(-1, rows.shape[-1])
        for offset, name in enumerate(self._value_columns):
            data[name] = flat[:, offset]
        return pd.DataFrame(data)
