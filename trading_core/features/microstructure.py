"""Microstructure features per bar: spreads, quote imbalance, realized volatility, illiquidity, trade intensity.

:func:`microstructure_features` computes them on a long bars frame (and optionally an NBBO quote stream);
:class:`StreamingMicrostructure` computes the same numbers bar by bar for the live loop, with numpy state only,
and a JSON snapshot so a restarted process continues exactly. Both use the same element-wise terms, and the
stream's trailing means repeat :func:`~trading_core.features.market_statistics.trailing_mean`'s cumulative-sum arithmetic step
for step, so on the same bars and quotes the two agree bit for bit (tests allow 1e-9).

Every feature of the bar ending at ``t`` uses only that ticker's bars up to ``t`` and quotes stamped at or before
``t`` (never a later one). Trailing windows run over each ticker's own bars (a ticker missing a minute just has no
bar there), across session boundaries: the return into a session's first bar is the overnight return.

Features (every spread is the FULL spread as a fraction of price, twice the cost model's half-spreads):

* ``ms_realized_vol``: ``sqrt(window * mean(r^2))`` over the last ``volatility_window`` log close-to-close
  returns ``r``, i.e. ``sqrt(sum r^2)`` once the window is full; during warm-up the mean of the returns that exist
  is scaled to the window. NaN on a ticker's first bar (no return yet).
* ``ms_amihud``: mean of ``|r| / (close * volume)`` times ``amihud_scale`` (per $1M traded by default) over the last
  ``amihud_window`` bars; bars without volume are skipped. NaN while no term exists.
* ``ms_cs_spread``: Corwin–Schultz from highs and lows (:func:`~trading_core.features.market_statistics.corwin_schultz_half_spread`),
  ``ms_ar_spread``: Abdi–Ranaldo from closes, highs and lows
  (:func:`~trading_core.features.market_statistics.abdi_ranaldo_half_spread`), both over ``spread_window`` pairs whose later bar
  is at or before ``t``. NaN on a ticker's first bar (no pair yet) instead of the cost model's fallback.
* ``ms_trade_intensity`` (bars with ``trade_count`` only): the bar's trade count over the mean trade count of the
  last ``intensity_window`` bars (the bar itself included).
* ``ms_quoted_spread``, ``ms_effective_spread``, ``ms_quote_imbalance`` (with quotes only), from the last quote of
  the ticker stamped at or before the bar end: ``(ask - bid) / mid``, ``2 |close - mid| / mid`` and
  ``(bid_size - ask_size) / (bid_size + ask_size)``. NaN before the ticker's first quote, when the quote is older
  than ``max_quote_age_s``, and (imbalance) when both sizes are 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from trading_core.features.market_statistics import (
    abdi_ranaldo_half_spread,
    abdi_ranaldo_half_spread_of_mean,
    abdi_ranaldo_pair_term,
    corwin_schultz_half_spread,
    corwin_schultz_two_bar_spread,
    quote_half_spread,
    trailing_mean,
)

BAR_FEATURES: tuple[str, ...] = ("ms_realized_vol", "ms_amihud", "ms_cs_spread", "ms_ar_spread")
TRADE_FEATURES: tuple[str, ...] = ("ms_trade_intensity",)
QUOTE_FEATURES: tuple[str, ...] = ("ms_quoted_spread", "ms_effective_spread", "ms_quote_imbalance")
QUOTE_COLUMNS: tuple[str, ...] = ("timestamp", "tic", "bid", "ask", "bid_size", "ask_size")
STATE_VERSION = 1
_PRICE_COLUMNS = ("open", "high", "low", "close")
_NO_QUOTE = -1  # quote time of a ticker without a quote yet (nanoseconds are never negative here)


class BarLike(Protocol):
    """One bar of one ticker, as :class:`trading_core.broker.base.Bar` (a layer above this one) carries it."""

    open: float
    high: float
    low: float
    close: float
    volume: float


class QuoteLike(Protocol):
    """One NBBO quote, as :class:`trading_core.broker.base.Quote` carries it; ``timestamp`` may be ``None``."""

    bid: float
    ask: float
    bid_size: float
    ask_size: float
    timestamp: pd.Timestamp | None


def _instant_ns(value: pd.Timestamp) -> int:
    """UTC nanoseconds of a timezone-aware time (a naive one would be read in the wrong zone)."""
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        raise ValueError(f"timestamp {stamp} has no timezone; localize it first")
    return int(stamp.value)


@dataclass(frozen=True)
class MicrostructureConfig:
    """Windows and scales of the microstructure features, in bars of the ticker.

    :param volatility_window: log returns in the realized volatility
    :param amihud_window: bars averaged in the Amihud illiquidity
    :param intensity_window: bars in the trade-count baseline of the trade intensity
    :param spread_window: bar pairs averaged by the Corwin–Schultz and Abdi–Ranaldo estimators
    :param amihud_scale: dollar volume unit of the Amihud ratio (``1e6``: absolute return per $1M traded)
    :param max_quote_age_s: oldest quote, in seconds before the bar end, still in force; ``None`` for any age
    """

    volatility_window: int = 30
    amihud_window: int = 30
    intensity_window: int = 30
    spread_window: int = 20
    amihud_scale: float = 1e6
    max_quote_age_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("volatility_window", "amihud_window", "intensity_window", "spread_window"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.amihud_scale) and self.amihud_scale > 0):
            raise ValueError(f"amihud_scale must be a positive number, got {self.amihud_scale!r}")
        if self.max_quote_age_s is not None and not self.max_quote_age_s >= 0:
            raise ValueError(f"max_quote_age_s must be non-negative or None, got {self.max_quote_age_s!r}")

    @property
    def max_quote_age_ns(self) -> int | None:
        return None if self.max_quote_age_s is None else round(self.max_quote_age_s * 1e9)


def feature_columns(with_quotes: bool, with_trade_count: bool) -> tuple[str, ...]:
    """The feature columns, in output order.

    :param with_quotes: quotes are given
    :param with_trade_count: the bars carry ``trade_count``
    """
    return (
        *BAR_FEATURES,
        *(TRADE_FEATURES if with_trade_count else ()),
        *(QUOTE_FEATURES if with_quotes else ()),
    )


# ---------------------------------------------------------------------------------------------------------
# Element-wise terms: the one definition both the batch and the streaming features use
# ---------------------------------------------------------------------------------------------------------


def _log_return(close: np.ndarray, previous_close: np.ndarray) -> np.ndarray:
    return np.log(close / previous_close)


def _amihud_term(log_return: np.ndarray, close: np.ndarray, volume: np.ndarray, scale: float) -> np.ndarray:
    dollar_volume = close * volume
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.abs(log_return) / dollar_volume * scale
    # No volume, no price impact to measure: skipped by the trailing mean rather than infinite.
    return np.where(dollar_volume > 0, term, np.nan)


def _realized_vol(mean_square: np.ndarray, window: int) -> np.ndarray:
    return np.sqrt(window * mean_square)


def _trade_intensity(trade_count: np.ndarray, mean_count: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean_count > 0, trade_count / mean_count, np.nan)


def _quote_terms(
    close: np.ndarray, bid: np.ndarray, ask: np.ndarray, bid_size: np.ndarray, ask_size: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quoted spread, effective spread and imbalance of bars against the quote in force (NaN where none)."""
    quoted = 2.0 * quote_half_spread(bid, ask)
    mid = 0.5 * (bid + ask)
    depth = bid_size + ask_size
    with np.errstate(divide="ignore", invalid="ignore"):
        effective = np.where(np.isfinite(quoted), 2.0 * np.abs(close - mid) / mid, np.nan)
        imbalance = np.where(np.isfinite(quoted) & (depth > 0), (bid_size - ask_size) / depth, np.nan)
    return quoted, effective, imbalance


# ---------------------------------------------------------------------------------------------------------
# Batch
# ---------------------------------------------------------------------------------------------------------


def _time_column(bars: pd.DataFrame) -> str:
    for name in ("timestamp", "date"):
        if name in bars.columns:
            return name
    raise ValueError("bars need a 'timestamp' (UTC bar end) or 'date' column")


def _utc_ns(times: pd.Series, what: str) -> np.ndarray:
    """Nanoseconds since the epoch of timezone-aware times (naive ones would be read in the wrong zone)."""
    stamps = pd.to_datetime(times)
    if stamps.dt.tz is None:
        raise ValueError(f"{what} timestamps have no timezone; localize them first")
    return pd.DatetimeIndex(stamps).tz_convert("UTC").as_unit("ns").asi8


def _checked_bars(bars: pd.DataFrame, time_column: str) -> pd.DataFrame:
    missing = [c for c in ("tic", *_PRICE_COLUMNS, "volume") if c not in bars.columns]
    if missing:
        raise ValueError(f"bars lack columns {missing}")
    if bars.duplicated([time_column, "tic"]).any():
        raise ValueError(f"bars hold more than one bar for some ({time_column}, tic)")
    prices = bars.loc[:, list(_PRICE_COLUMNS)].to_numpy(dtype=np.float64)
    volume = bars["volume"].to_numpy(dtype=np.float64)
    # The stream's Bar refuses these too; both sides must see the same bars.
    if not (np.isfinite(prices).all() and (prices > 0).all() and (bars["low"] <= bars["high"]).all()):
        raise ValueError(
            "bars hold non-positive, non-finite or crossed (low > high) prices; validate them first"
        )
    if not (np.isfinite(volume).all() and (volume >= 0).all()):
        raise ValueError("bars hold negative or non-finite volumes; validate them first")
    return bars.sort_values([time_column, "tic"], kind="stable").reset_index(drop=True)


def _quotes_in_force(
    bar_ns: np.ndarray, tics: np.ndarray, quotes: pd.DataFrame, max_age_ns: int | None
) -> dict[str, np.ndarray]:
    """Per bar, the fields of the ticker's last quote stamped at or before the bar end (NaN where none)."""
    missing = [c for c in QUOTE_COLUMNS if c not in quotes.columns]
    if missing:
        raise ValueError(f"quotes lack columns {missing}")
    left = pd.DataFrame({"_ns": bar_ns, "tic": tics, "_row": np.arange(len(bar_ns))})
    right = pd.DataFrame(
        {
            "_ns": _utc_ns(quotes["timestamp"], "quote"),
            "tic": quotes["tic"].to_numpy(dtype=object),
            **{c: quotes[c].to_numpy(dtype=np.float64) for c in QUOTE_COLUMNS[2:]},
        }
    )
    # Stable sorts: of quotes stamped at the same instant the last one given wins, as in the stream.
    merged = pd.merge_asof(
        left.sort_values("_ns", kind="stable"),
        right.sort_values("_ns", kind="stable"),
        on="_ns",
        by="tic",
        direction="backward",
        allow_exact_matches=True,
        tolerance=max_age_ns,
    ).sort_values("_row")
    return {c: merged[c].to_numpy(dtype=np.float64) for c in QUOTE_COLUMNS[2:]}


def microstructure_features(
    bars: pd.DataFrame,
    quotes: pd.DataFrame | None = None,
    config: MicrostructureConfig = MicrostructureConfig(),
) -> pd.DataFrame:
    """Microstructure features of every bar (see the module docstring for each one and its warm-up).

    :param bars: long bars ``timestamp`` (UTC bar end; or ``date`` for daily bars), ``tic, open, high, low,
        close, volume`` and optionally ``trade_count``; ticker and time need not be rectangular
    :param quotes: NBBO quotes ``timestamp, tic, bid, ask, bid_size, ask_size`` (needs ``timestamp`` bars)
    :param config: windows and scales
    :return: one row per bar, sorted by time then ticker: the time column, ``tic`` and
        :func:`feature_columns` in that order
    """
    time_column = _time_column(bars)
    if quotes is not None and time_column != "timestamp":
        raise ValueError("quotes need bars with a 'timestamp' column (the bar end) to be matched against")
    frame = _checked_bars(bars, time_column)
    with_trade_count = "trade_count" in frame.columns
    tickers, column = np.unique(frame["tic"].to_numpy(dtype=object), return_inverse=True)
    ordinal = frame.groupby("tic", sort=False).cumcount().to_numpy()
    # Each ticker's bars in time order down its own column, NaN after its last bar: trailing windows along
    # axis 0 then run over the ticker's bars only, and the padding comes after every real row.
    shape = (int(ordinal.max()) + 1 if len(frame) else 0, len(tickers))

    def panel(name: str) -> np.ndarray:
        values = np.full(shape, np.nan)
        values[ordinal, column] = frame[name].to_numpy(dtype=np.float64)
        return values

    high, low, close, volume = (panel(name) for name in ("high", "low", "close", "volume"))
    log_return = np.full(shape, np.nan)
    log_return[1:] = _log_return(close[1:], close[:-1])
    square_mean = trailing_mean(log_return * log_return, config.volatility_window, empty=np.nan)
    amihud_terms = _amihud_term(log_return, close, volume, config.amihud_scale)
    first_bar = ordinal == 0
    spread = config.spread_window
    features: dict[str, np.ndarray] = {
        "ms_realized_vol": _realized_vol(square_mean, config.volatility_window)[ordinal, column],
        "ms_amihud": trailing_mean(amihud_terms, config.amihud_window, empty=np.nan)[ordinal, column],
        # The estimators' warm-up fallback is a cost-model choice; a feature says "not known yet" instead.
        "ms_cs_spread": np.where(
            first_bar, np.nan, 2.0 * corwin_schultz_half_spread(high, low, spread, 0.0)[ordinal, column]
        ),
        "ms_ar_spread": np.where(
            first_bar, np.nan, 2.0 * abdi_ranaldo_half_spread(high, low, close, spread, 0.0)[ordinal, column]
        ),
    }
    if with_trade_count:
        trade_count = panel("trade_count")
        mean_count = trailing_mean(trade_count, config.intensity_window, empty=np.nan)
        features["ms_trade_intensity"] = _trade_intensity(trade_count, mean_count)[ordinal, column]
    if quotes is not None:
        bar_ns = _utc_ns(frame["timestamp"], "bar")
        quote = _quotes_in_force(bar_ns, frame["tic"].to_numpy(dtype=object), quotes, config.max_quote_age_ns)
        terms = _quote_terms(
            frame["close"].to_numpy(dtype=np.float64),
            quote["bid"],
            quote["ask"],
            quote["bid_size"],
            quote["ask_size"],
        )
        features.update(zip(QUOTE_FEATURES, terms, strict=True))
    result = frame.loc[:, [time_column, "tic"]].copy()
    for name in feature_columns(quotes is not None, with_trade_count):
        result[name] = features[name]
    return result


# ---------------------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------------------


def _to_json(values: np.ndarray) -> list[Any]:
    """A float array as a JSON list (NaN as ``None``; Python floats round-trip through JSON exactly)."""
    return [None if math.isnan(v) else v for v in values.reshape(-1).tolist()]


def _from_json(values: Sequence[Any], shape: tuple[int, ...]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64).reshape(shape)


class _StreamingTrailingMean:
    """:func:`~trading_core.features.market_statistics.trailing_mean` one row at a time, per ticker, bit for bit.

    ``trailing_mean`` takes the difference of two cumulative sums ``window`` rows apart; this keeps each
    ticker's running sums and the last ``window`` of them, so the same additions and subtractions happen in
    the same order.

    :param n_tickers: number of tickers
    :param window: number of trailing rows
    """

    def __init__(self, n_tickers: int, window: int) -> None:
        self.window = window
        self.total = np.zeros(n_tickers)  # running sum of the finite values (NaN counts as 0)
        self.count = np.zeros(n_tickers)  # running count of the finite values
        self.past_total = np.zeros((n_tickers, window))
        self.past_count = np.zeros((n_tickers, window))
        self.pushed = np.zeros(n_tickers, dtype=np.int64)

    def push(self, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Append one value to each of ``rows``' series and return their trailing means (NaN for none).

        :param rows: ticker indices, unique
        :param values: one value per row
        """
        finite = np.isfinite(values)
        self.total[rows] += np.where(finite, values, 0.0)
        self.count[rows] += finite
        slot = self.pushed[rows] % self.window
        full = self.pushed[rows] >= self.window
        window_total = self.total[rows] - np.where(full, self.past_total[rows, slot], 0.0)
        window_count = self.count[rows] - np.where(full, self.past_count[rows, slot], 0.0)
        self.past_total[rows, slot] = self.total[rows]
        self.past_count[rows, slot] = self.count[rows]
        self.pushed[rows] += 1
        mean = np.full(len(rows), np.nan)
        np.divide(window_total, window_count, out=mean, where=window_count > 0)
        return mean

    def state(self) -> dict[str, Any]:
        return {
            "total": _to_json(self.total),
            "count": _to_json(self.count),
            "past_total": _to_json(self.past_total),
            "past_count": _to_json(self.past_count),
            "pushed": self.pushed.tolist(),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.total = _from_json(state["total"], self.total.shape)
        self.count = _from_json(state["count"], self.count.shape)
        self.past_total = _from_json(state["past_total"], self.past_total.shape)
        self.past_count = _from_json(state["past_count"], self.past_count.shape)
        self.pushed = np.array(state["pushed"], dtype=np.int64)


_LAST_BAR = ("high", "low", "close")
_QUOTE_FIELDS = ("bid", "ask", "bid_size", "ask_size")


class StreamingMicrostructure:
    """:func:`microstructure_features` one bar event at a time, for the live loop.

    Feed every event of the stream in time order (a ticker without a bar in an event just does not move).
    Quotes are the ones a :class:`~trading_core.live.sources.BarEvent` carries: each ticker's last quote at or
    before the event. A quote stamped after the event's time is ignored (it may never price an earlier bar); one
    without a timestamp counts as stamped at the event. The quote in force stays so until a newer one comes,
    as in the batch features, which see every quote.

    :param tickers: the tickers; output rows list them sorted
    :param config: windows and scales, as given to :func:`microstructure_features`
    :param with_quotes: output the quote features (the batch features given quotes)
    :param with_trade_count: output the trade intensity (the batch bars carrying ``trade_count``)
    """

    def __init__(
        self,
        tickers: Sequence[str],
        config: MicrostructureConfig = MicrostructureConfig(),
        with_quotes: bool = True,
        with_trade_count: bool = False,
    ) -> None:
        sorted_tickers = tuple(sorted(set(tickers)))
        if not sorted_tickers or len(sorted_tickers) != len(tickers):
            raise ValueError(f"tickers must be non-empty and unique, got {list(tickers)}")
        self._tickers = sorted_tickers
        self._row = {ticker: i for i, ticker in enumerate(sorted_tickers)}
        self.config = config
        self.with_quotes = with_quotes
        self.with_trade_count = with_trade_count
        self._columns = feature_columns(with_quotes, with_trade_count)
        n = len(sorted_tickers)
        self._last_bar = np.full((len(_LAST_BAR), n), np.nan)
        self._quote = np.full((len(_QUOTE_FIELDS), n), np.nan)
        self._quote_ns = np.full(n, _NO_QUOTE, dtype=np.int64)
        self._last_ns: int | None = None
        self._means = {
            "square": _StreamingTrailingMean(n, config.volatility_window),
            "amihud": _StreamingTrailingMean(n, config.amihud_window),
            "cs": _StreamingTrailingMean(n, config.spread_window),
            "ar": _StreamingTrailingMean(n, config.spread_window),
            "trade_count": _StreamingTrailingMean(n, config.intensity_window),
        }

    @property
    def tickers(self) -> tuple[str, ...]:
        """The tickers, sorted: the row order of :meth:`update`'s output."""
        return self._tickers

    @property
    def columns(self) -> tuple[str, ...]:
        """The feature columns of :meth:`update`'s output, in order."""
        return self._columns

    def update(
        self,
        timestamp: pd.Timestamp,
        bars: Mapping[str, BarLike],
        quotes: Mapping[str, QuoteLike] | None = None,
        trade_counts: Mapping[str, float] | None = None,
    ) -> np.ndarray:
        """Consume one event and return its features.

        :param timestamp: the bars' end, timezone-aware, later than every event before
        :param bars: each ticker's bar (others are ignored)
        :param quotes: each ticker's last quote at or before ``timestamp``
        :param trade_counts: each ticker's trades in the bar (missing: unknown)
        :return: ``(tickers, columns)`` float matrix; rows of tickers without a bar in this event are NaN
        """
        now = _instant_ns(timestamp)
        if self._last_ns is not None and now <= self._last_ns:
            raise ValueError(f"events must move forward in time: {timestamp} is not after the last one")
        self._last_ns = now
        if quotes:
            self._record_quotes(now, quotes)
        output = np.full((len(self._tickers), len(self._columns)), np.nan)
        present = [(self._row[s], bar) for s, bar in bars.items() if s in self._row]
        if not present:
            return output
        rows = np.array([row for row, _ in present])
        _, high, low, close, volume = np.array(
            [(b.open, b.high, b.low, b.close, b.volume) for _, b in present], dtype=np.float64
        ).T
        prev_high, prev_low, prev_close = self._last_bar[:, rows]
        config, means = self.config, self._means
        log_return = _log_return(close, prev_close)
        square_mean = means["square"].push(rows, log_return * log_return)
        amihud = means["amihud"].push(rows, _amihud_term(log_return, close, volume, config.amihud_scale))
        cs_mean = means["cs"].push(rows, corwin_schultz_two_bar_spread(prev_high, prev_low, high, low))
        ar_terms = abdi_ranaldo_pair_term(prev_high, prev_low, prev_close, high, low)
        ar_mean = means["ar"].push(rows, ar_terms)
        features = {
            "ms_realized_vol": _realized_vol(square_mean, config.volatility_window),
            "ms_amihud": amihud,
            # The batch doubles corwin_schultz_half_spread, which halves the trailing mean.
            "ms_cs_spread": 2.0 * (0.5 * cs_mean),
            "ms_ar_spread": 2.0 * abdi_ranaldo_half_spread_of_mean(ar_mean),
        }
        if self.with_trade_count:
            counts = trade_counts or {}
            trade_count = np.array([counts.get(self._tickers[row], np.nan) for row in rows], dtype=np.float64)
            mean_count = means["trade_count"].push(rows, trade_count)
            features["ms_trade_intensity"] = _trade_intensity(trade_count, mean_count)
        if self.with_quotes:
            quote = self._quote[:, rows].copy()
            max_age = config.max_quote_age_ns
            stale = self._quote_ns[rows] == _NO_QUOTE
            if max_age is not None:
                stale |= now - self._quote_ns[rows] > max_age
            quote[:, stale] = np.nan
            features.update(zip(QUOTE_FEATURES, _quote_terms(close, *quote), strict=True))
        self._last_bar[:, rows] = (high, low, close)
        for index, name in enumerate(self._columns):
            output[rows, index] = features[name]
        return output

    def _record_quotes(self, now: int, quotes: Mapping[str, QuoteLike]) -> None:
        for symbol, quote in quotes.items():
            row = self._row.get(symbol)
            if row is None:
                continue
            stamp = now if quote.timestamp is None else _instant_ns(quote.timestamp)
            # Later than the bar end: never in force for it. Older than the quote held: superseded already.
            if stamp > now or stamp < self._quote_ns[row]:
                continue
            self._quote[:, row] = (quote.bid, quote.ask, quote.bid_size, quote.ask_size)
            self._quote_ns[row] = stamp

    def state(self) -> dict[str, Any]:
        """The whole state as plain JSON data (floats round-trip exactly); see :meth:`load_state`."""
        return {
            "version": STATE_VERSION,
            "tickers": list(self._tickers),
            "config": {
                "volatility_window": self.config.volatility_window,
                "amihud_window": self.config.amihud_window,
                "intensity_window": self.config.intensity_window,
                "spread_window": self.config.spread_window,
                "amihud_scale": self.config.amihud_scale,
                "max_quote_age_s": self.config.max_quote_age_s,
            },
            "with_quotes": self.with_quotes,
            "with_trade_count": self.with_trade_count,
            "last_ns": self._last_ns,
            "last_bar": _to_json(self._last_bar),
            "quote": _to_json(self._quote),
            "quote_ns": self._quote_ns.tolist(),
            "means": {name: mean.state() for name, mean in self._means.items()},
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state` (possibly read back from JSON), exactly as the original would have.

        :param state: what :meth:`state` returned, for the same tickers, config and outputs
        :raises ValueError: another version, tickers, config or outputs
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported microstructure state version {state.get('version')!r}")
        expected = self.state()
        for key in ("tickers", "config", "with_quotes", "with_trade_count"):
            if state[key] != expected[key]:
                raise ValueError(
                    f"state was taken with {key}={state[key]!r}, this stream has {expected[key]!r}"
                )
        self._last_ns = state["last_ns"]
        self._last_bar = _from_json(state["last_bar"], self._last_bar.shape)
        self._quote = _from_json(state["quote"], self._quote.shape)
        self._quote_ns = np.array(state["quote_ns"], dtype=np.int64)
        for name, mean in self._means.items():
            mean.load_state(state["means"][name])
