"""Microstructure features (batch and streaming), the Abdi–Ranaldo estimator, the quoted spread in the cost
model, and the seeded SYNTHETIC quote generator.

Bars are the real shared 1-minute and daily files; every quote (and trade count) here is SYNTHETIC, generated
in the test from a seed, because the shared data holds no quotes.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testkit.synthetic_quotes import SYNTHETIC_QUOTE_COLUMNS, SyntheticQuoteConfig, synthetic_quotes
from tests.conftest import SHARED_DATA
from trading_core.broker.base import Bar, OrderRequest, Quote
from trading_core.broker.simulated import SimulatedBroker
from trading_core.features.microstructure import (
    BAR_FEATURES,
    QUOTE_FEATURES,
    MicrostructureConfig,
    StreamingMicrostructure,
    feature_columns,
    microstructure_features,
)
from trading_core.live.sources import read_bars
from trading_core.market.arrays import MarketArrays
from trading_core.market.costs import (
    CostModel,
    NoImpact,
    ZeroCommission,
    abdi_ranaldo_half_spread,
    abdi_ranaldo_pair_term,
    corwin_schultz_half_spread,
    quote_half_spread,
)
from trading_core.market.execution import ExecutionConfig
from trading_core.market.simulator import PortfolioSimulator, SimulationConfig

MINUTE_FILE = SHARED_DATA / "intraday_1min_us_equities_2019.csv.gz"
DAILY_FILE = SHARED_DATA / "dow30_daily_2009_2021.csv.gz"
TICKERS = ["AAPL", "JPM", "SPY", "V"]
SMALL = MicrostructureConfig(volatility_window=5, amihud_window=4, intensity_window=3, spread_window=3)


def _require(path):
    if not path.exists():
        pytest.skip(f"real market data {path} not found (set RL_TRADING_SHARED_DATA)")
    return path


@pytest.fixture(scope="module")
def minute_bars() -> pd.DataFrame:
    """Real 1-minute bars (4 tickers, 5 sessions), with a SYNTHETIC seeded trade count per bar."""
    bars = read_bars(_require(MINUTE_FILE), TICKERS, validate=False)
    rng = np.random.default_rng(11)
    return bars.assign(trade_count=rng.poisson(bars["volume"].to_numpy() / 150.0) + 1.0)


@pytest.fixture(scope="module")
def minute_quotes(minute_bars: pd.DataFrame) -> pd.DataFrame:
    return synthetic_quotes(minute_bars, seed=5)


def synthetic_minute_bars(seed: int, n_minutes: int, tickers: tuple[str, ...] = ("AAA", "BBB", "CCC")):
    """SYNTHETIC ragged 1-minute bars: a seeded log random walk per ticker, about a tenth of the bars dropped."""
    rng = np.random.default_rng(seed)
    ends = pd.date_range("2024-03-04 14:31", periods=n_minutes, freq="1min", tz="UTC")
    frames = []
    for tic in tickers:
        close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-3, n_minutes)))
        open_ = close * np.exp(rng.normal(0.0, 5e-4, n_minutes))
        high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 5e-4, n_minutes)))
        low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 5e-4, n_minutes)))
        volume = rng.integers(0, 5000, n_minutes).astype(float)  # zero volumes happen
        frame = pd.DataFrame(
            {"timestamp": ends, "tic": tic, "open": open_, "high": high, "low": low, "close": close}
        )
        frame["volume"] = volume
        frame["trade_count"] = np.floor(volume / 50.0)
        frames.append(frame[rng.uniform(size=n_minutes) > 0.1])
    return pd.concat(frames).sort_values(["timestamp", "tic"]).reset_index(drop=True)


def replay(
    stream: StreamingMicrostructure,
    bars: pd.DataFrame,
    quotes: pd.DataFrame | None,
    stop: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Feed ``bars`` event by event as the live loop's BarEvents do: each ticker's last quote at or before the
    event (found by walking the quote stream, not by the batch's merge), the bars, their trade counts."""
    columns = ["timestamp", "tic", *stream.columns]
    if stop is not None:
        bars = bars[bars["timestamp"] <= stop]
    if quotes is not None:
        quote_ns = pd.DatetimeIndex(quotes["timestamp"]).as_unit("ns").asi8
        quote_rows = list(quotes.itertuples(index=False))
    bars = bars.sort_values(["timestamp", "tic"], kind="stable")
    times = pd.DatetimeIndex(bars["timestamp"])
    starts = np.flatnonzero(np.r_[True, times[1:] != times[:-1]])
    tics = bars["tic"].tolist()
    values = bars[["open", "high", "low", "close", "volume"]].to_numpy().tolist()
    counts = bars["trade_count"].tolist() if "trade_count" in bars.columns else None
    position, last_quote, rows = 0, {}, []
    for start, stop_row in zip(starts, [*starts[1:], len(bars)], strict=True):
        timestamp = times[start]
        if quotes is not None:
            while position < len(quote_rows) and quote_ns[position] <= timestamp.value:
                q = quote_rows[position]
                last_quote[q.tic] = Quote(q.bid, q.ask, q.bid_size, q.ask_size, q.timestamp)
                position += 1
        event = {tics[i]: Bar(*values[i]) for i in range(start, stop_row)}
        event_counts = None if counts is None else {tics[i]: counts[i] for i in range(start, stop_row)}
        output = stream.update(timestamp, event, dict(last_quote), event_counts)
        for i in range(start, stop_row):
            rows.append([timestamp, tics[i], *output[stream.tickers.index(tics[i])]])
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------------------------- synthetic quotes


def test_synthetic_quotes_are_seeded_and_stamped_strictly_inside_their_bars(minute_bars):
    bars = minute_bars.head(400)
    config = SyntheticQuoteConfig(quotes_per_bar=5)
    quotes = synthetic_quotes(bars, seed=3, config=config)
    pd.testing.assert_frame_equal(quotes, synthetic_quotes(bars, seed=3, config=config))
    assert not quotes["bid"].equals(synthetic_quotes(bars, seed=4, config=config)["bid"])
    assert tuple(quotes.columns) == SYNTHETIC_QUOTE_COLUMNS and len(quotes) == 5 * len(bars)
    assert (quotes["bid"] > 0).all() and (quotes["ask"] - quotes["bid"] >= 0.01 - 1e-9).all()
    assert (quotes["bid_size"] >= 100).all() and (quotes["ask_size"] >= 100).all()
    # Each quote belongs to the bar whose minute it falls in: strictly after the previous end, before this end.
    end = quotes["timestamp"].dt.ceil("1min")
    assert (quotes["timestamp"] < end).all()
    matched = quotes.assign(timestamp=end).merge(bars, on=["timestamp", "tic"], how="left")
    assert matched["close"].notna().all()
    assert ((matched.groupby(["timestamp", "tic"]).size()) == 5).all()
    # Mids stay inside the bar's range (up to the tick rounding of each side).
    mid = 0.5 * (matched["bid"] + matched["ask"])
    assert (mid >= matched["low"] - 0.01).all() and (mid <= matched["high"] + 0.01).all()
    spread_bps = 1e4 * (matched["ask"] - matched["bid"]) / mid
    assert 1.0 < spread_bps.median() < 10.0


# ------------------------------------------------------------------------------------------ batch features


def test_features_on_real_minute_bars_with_synthetic_quotes(minute_bars, minute_quotes):
    config = MicrostructureConfig()
    features = microstructure_features(minute_bars, minute_quotes, config)
    assert list(features.columns) == ["timestamp", "tic", *feature_columns(True, True)]
    assert len(features) == len(minute_bars)
    first = features.groupby("tic").head(1)
    assert first[["ms_realized_vol", "ms_cs_spread", "ms_ar_spread"]].isna().all().all()
    rest = features.drop(first.index)
    assert rest[list(BAR_FEATURES) + ["ms_trade_intensity"]].notna().all().all()
    # Every bar has its own quotes (the generator stamps several inside each bar).
    assert features[list(QUOTE_FEATURES)].notna().all().all()
    assert (features["ms_quoted_spread"] > 0).all() and features["ms_quote_imbalance"].abs().max() < 1

    # Hand checks on one ticker against pandas.
    aapl_bars = minute_bars[minute_bars["tic"] == "AAPL"].sort_values("timestamp").reset_index(drop=True)
    aapl = features[features["tic"] == "AAPL"].reset_index(drop=True)
    log_return = np.log(aapl_bars["close"]).diff()
    full_window = np.sqrt((log_return**2).rolling(config.volatility_window).sum())
    np.testing.assert_allclose(aapl["ms_realized_vol"][40:], full_window[40:], rtol=1e-10)
    amihud = (log_return.abs() / (aapl_bars["close"] * aapl_bars["volume"]) * 1e6).rolling(30, 1).mean()
    np.testing.assert_allclose(aapl["ms_amihud"][1:], amihud[1:], rtol=1e-9)
    counts = aapl_bars["trade_count"]
    np.testing.assert_allclose(aapl["ms_trade_intensity"], counts / counts.rolling(30, 1).mean(), rtol=1e-12)
    np.testing.assert_allclose(
        aapl["ms_cs_spread"][1:],
        2 * corwin_schultz_half_spread(aapl_bars[["high"]].to_numpy(), aapl_bars[["low"]].to_numpy())[1:, 0],
    )
    # The quote in force is the last one stamped at or before the bar end.
    row = 700
    end = aapl_bars["timestamp"][row]
    quotes = minute_quotes[(minute_quotes["tic"] == "AAPL") & (minute_quotes["timestamp"] <= end)]
    bid, ask = quotes["bid"].iloc[-1], quotes["ask"].iloc[-1]
    mid = (bid + ask) / 2
    assert aapl["ms_quoted_spread"][row] == pytest.approx((ask - bid) / mid, rel=1e-12)
    assert aapl["ms_effective_spread"][row] == pytest.approx(2 * abs(aapl_bars["close"][row] - mid) / mid)


def test_quote_features_need_timestamped_bars_and_naive_times_are_refused(minute_bars, minute_quotes):
    daily = minute_bars.rename(columns={"timestamp": "date"})
    assert "ms_quoted_spread" not in microstructure_features(daily).columns
    with pytest.raises(ValueError, match="timestamp"):
        microstructure_features(daily, minute_quotes)
    naive = minute_quotes.assign(timestamp=minute_quotes["timestamp"].dt.tz_localize(None))
    with pytest.raises(ValueError, match="timezone"):
        microstructure_features(minute_bars, naive)
    with pytest.raises(ValueError, match="prices"):
        microstructure_features(minute_bars.assign(low=minute_bars["high"] * 1.01))


def test_a_quote_stamped_after_the_bar_end_never_prices_that_bar(minute_bars, minute_quotes):
    bars = minute_bars[minute_bars["tic"] == "JPM"].head(50)
    quotes = minute_quotes[minute_quotes["tic"] == "JPM"]
    end = bars["timestamp"].iloc[20]
    later = pd.DataFrame(
        {
            "timestamp": [end + pd.Timedelta(1, "ns")],
            "tic": ["JPM"],
            "bid": [1.0],
            "ask": [500.0],
            "bid_size": [1.0],
            "ask_size": [9e9],
        }
    )
    base = microstructure_features(bars, quotes)
    shifted = microstructure_features(bars, pd.concat([quotes, later], ignore_index=True))
    pd.testing.assert_frame_equal(base.iloc[:21], shifted.iloc[:21])
    # It is in force at the next bar end once that bar's own quotes are gone.
    without_next = quotes[(quotes["timestamp"] <= end) | (quotes["timestamp"] > end + pd.Timedelta("1min"))]
    moved = microstructure_features(bars, pd.concat([without_next, later], ignore_index=True))
    assert moved["ms_quoted_spread"].iloc[21] == pytest.approx(499.0 / 250.5)

    # The stream ignores it too, and keeps the quote it had.
    stream = StreamingMicrostructure(["JPM"], with_trade_count=True)
    replayed = replay(stream, bars.iloc[:20], quotes)
    bar = bars.iloc[20]
    output = stream.update(
        end,
        {"JPM": Bar(bar.open, bar.high, bar.low, bar.close, bar.volume)},
        {"JPM": Quote(1.0, 500.0, 1.0, 9e9, end + pd.Timedelta(1, "ns"))},
        {"JPM": bar.trade_count},
    )
    assert len(replayed) == 20
    held = quotes[quotes["timestamp"] <= bars["timestamp"].iloc[19]].iloc[-1]
    assert output[0, stream.columns.index("ms_quoted_spread")] == 2 * quote_half_spread(held.bid, held.ask)


def test_stale_quotes_beyond_the_age_limit_are_not_used(minute_bars):
    bars = minute_bars[minute_bars["tic"] == "SPY"].head(30)
    quotes = synthetic_quotes(bars.head(10), seed=1, bar_length=pd.Timedelta("1min"))
    config = MicrostructureConfig(max_quote_age_s=120.0)
    features = microstructure_features(bars, quotes, config)
    last_quote = quotes["timestamp"].max()
    age = (features["timestamp"] - last_quote).dt.total_seconds()
    assert features.loc[age <= 120, "ms_quoted_spread"].notna().all()
    assert features.loc[age > 120, list(QUOTE_FEATURES)].isna().all().all() and (age > 120).sum() == 19
    # Without a limit the last quote stays in force.
    assert microstructure_features(bars, quotes)["ms_quoted_spread"].notna().all()
    streamed = replay(StreamingMicrostructure(["SPY"], config, with_trade_count=True), bars, quotes)
    pd.testing.assert_frame_equal(streamed, features.reset_index(drop=True), check_exact=True)


# ---------------------------------------------------------------------------------------------- no lookahead


@pytest.mark.parametrize("cut", [17, 390, 1400])
def test_no_lookahead_on_real_minutes_prefix_equals_the_full_run(minute_bars, minute_quotes, cut):
    """Features of the bars up to a time (with quotes up to it, or with every quote) are the full run's rows."""
    full = microstructure_features(minute_bars, minute_quotes)
    stop = np.sort(minute_bars["timestamp"].unique())[cut]
    prefix_bars = minute_bars[minute_bars["timestamp"] <= stop]
    prefix_quotes = minute_quotes[minute_quotes["timestamp"] <= stop]
    expected = full[full["timestamp"] <= stop].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        microstructure_features(prefix_bars, prefix_quotes), expected, check_exact=True
    )
    # Quotes after the last bar end change nothing either.
    pd.testing.assert_frame_equal(
        microstructure_features(prefix_bars, minute_quotes), expected, check_exact=True
    )


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), cut=st.integers(0, 59), data=st.data())
def test_no_lookahead_scrambling_the_future_never_changes_the_past(seed, cut, data):
    bars = synthetic_minute_bars(seed, 60)
    quotes = synthetic_quotes(bars, seed=seed + 1, bar_length=pd.Timedelta("1min"))
    stop = bars["timestamp"].min() + pd.Timedelta(minutes=cut)
    future = bars["timestamp"] > stop
    scrambled = bars.copy()
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    factor = rng.uniform(0.5, 2.0, future.sum())
    for name in ("open", "high", "low", "close"):
        scrambled.loc[future, name] *= factor
    scrambled.loc[future, ["volume", "trade_count"]] = rng.integers(0, 10_000, (future.sum(), 2))
    other_quotes = synthetic_quotes(scrambled, seed=seed + 2, bar_length=pd.Timedelta("1min"))
    mixed_quotes = pd.concat(
        [quotes[quotes["timestamp"] <= stop], other_quotes[other_quotes["timestamp"] > stop]],
        ignore_index=True,
    )
    before = microstructure_features(bars, quotes, SMALL)
    after = microstructure_features(scrambled, mixed_quotes, SMALL)
    past = before["timestamp"] <= stop
    pd.testing.assert_frame_equal(before[past], after[past], check_exact=True)


# ------------------------------------------------------------------------------------------------ streaming


def test_stream_equals_batch_on_real_minutes_and_a_restart_continues_bit_equal(minute_bars, minute_quotes):
    batch = microstructure_features(minute_bars, minute_quotes)
    stream = StreamingMicrostructure(TICKERS, with_quotes=True, with_trade_count=True)
    stop = np.sort(minute_bars["timestamp"].unique())[900]
    first = replay(stream, minute_bars, minute_quotes, stop=stop)
    # A restarted process: the state through JSON into a new stream, which continues on the rest.
    restored = StreamingMicrostructure(TICKERS, with_quotes=True, with_trade_count=True)
    restored.load_state(json.loads(json.dumps(stream.state(), allow_nan=False)))
    rest_bars = minute_bars[minute_bars["timestamp"] > stop]
    rest = replay(restored, rest_bars, minute_quotes[minute_quotes["timestamp"] > stop - pd.Timedelta("1h")])
    streamed = pd.concat([first, rest], ignore_index=True)
    assert list(streamed.columns) == list(batch.columns) and len(streamed) == len(batch)
    for column in stream.columns:
        np.testing.assert_allclose(streamed[column], batch[column], rtol=1e-9, atol=0, err_msg=column)
    # In fact they are the same numbers: the stream repeats the batch arithmetic.
    pd.testing.assert_frame_equal(streamed, batch, check_exact=True)


def test_stream_without_quotes_or_trade_counts_and_its_checks(minute_bars):
    bars = minute_bars.drop(columns="trade_count").head(200)
    stream = StreamingMicrostructure(TICKERS, SMALL, with_quotes=False)
    assert stream.columns == BAR_FEATURES
    pd.testing.assert_frame_equal(replay(stream, bars, None), microstructure_features(bars, None, SMALL))
    when = bars["timestamp"].iloc[-1]
    with pytest.raises(ValueError, match="forward"):
        stream.update(when, {})
    assert np.isnan(stream.update(when + pd.Timedelta("1min"), {})).all()
    other = StreamingMicrostructure(TICKERS, MicrostructureConfig(), with_quotes=False)
    with pytest.raises(ValueError, match="config"):
        other.load_state(stream.state())
    with pytest.raises(ValueError, match="unique"):
        StreamingMicrostructure(["AAPL", "AAPL"])


# ------------------------------------------------------------------------------------------------ Abdi–Ranaldo


def ar_term(h0, l0, c0, h1, l1):
    c = np.log(c0)
    return (c - (np.log(h0) + np.log(l0)) / 2) * (c - (np.log(h1) + np.log(l1)) / 2)


def test_abdi_ranaldo_on_a_hand_built_example():
    high = np.array([[10.2], [10.3], [10.25], [10.6]])
    low = np.array([[9.9], [10.0], [9.95], [10.1]])
    close = np.array([[10.15], [10.02], [10.2], [10.12]])
    t1 = ar_term(10.2, 9.9, 10.15, 10.3, 10.0)
    t2 = ar_term(10.3, 10.0, 10.02, 10.25, 9.95)
    t3 = ar_term(10.25, 9.95, 10.2, 10.6, 10.1)
    half = abdi_ranaldo_half_spread(high, low, close, window=2, fallback_bps=12.0)
    expected = [6e-4] + [np.sqrt(max(4 * m, 0.0)) / 2 for m in (t1, (t1 + t2) / 2, (t2 + t3) / 2)]
    np.testing.assert_allclose(half[:, 0], expected, rtol=1e-12)
    np.testing.assert_allclose(
        abdi_ranaldo_pair_term(high[:-1], low[:-1], close[:-1], high[1:], low[1:])[:, 0], [t1, t2, t3]
    )


def test_abdi_ranaldo_row_t_uses_the_pair_ending_at_t_and_nothing_later():
    rng = np.random.default_rng(0)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, (40, 3)), axis=0))
    high, low = close * 1.006, close * 0.993
    base = abdi_ranaldo_half_spread(high, low, close, window=5)
    t = 20
    # Bar t+1's range is what the paper's pair (t, t+1) needs: row t must not move when it changes.
    later_high, later_low = high.copy(), low.copy()
    later_high[t + 1 :] *= 1.05
    later_low[t + 1 :] *= 0.97
    moved = abdi_ranaldo_half_spread(later_high, later_low, close, window=5)
    np.testing.assert_array_equal(base[: t + 1], moved[: t + 1])
    assert not np.array_equal(base[t + 1], moved[t + 1])
    # Bar t's own range enters row t through the pair (t-1, t).
    now_high = high.copy()
    now_high[t] *= 1.05
    assert not np.array_equal(abdi_ranaldo_half_spread(now_high, low, close, window=5)[t], base[t])


def test_abdi_ranaldo_clips_negative_means_and_skips_bad_prices():
    # A close at its bar's low followed by a bar ranging below it: the product is negative.
    high, low, close = np.array([[10.0], [9.4]]), np.array([[9.5], [9.0]]), np.array([[9.5], [9.2]])
    assert ar_term(10.0, 9.5, 9.5, 9.4, 9.0) < 0
    assert abdi_ranaldo_half_spread(high, low, close)[1, 0] == 0.0
    high = np.array([[10.2], [np.nan], [10.3], [10.4]])
    low = np.array([[10.0], [9.9], [10.1], [0.0]])
    close = np.array([[10.1], [10.0], [10.2], [10.3]])
    half = abdi_ranaldo_half_spread(high, low, close, window=3, fallback_bps=8.0)
    assert np.isfinite(half).all() and (half >= 0).all()
    np.testing.assert_array_equal(half[:, 0], [4e-4] * 4)  # every pair touches a bad price


def test_spread_estimators_recover_a_known_synthetic_spread():
    """SYNTHETIC trades: a random-walk efficient price, each trade at the bid or the ask (20 bps apart)."""
    rng = np.random.default_rng(42)
    bars, trades, spread = 2000, 200, 20e-4
    efficient = np.cumsum(rng.normal(0, 1e-4, bars * trades)).reshape(bars, trades)
    observed = efficient + rng.choice([-0.5, 0.5], size=efficient.shape) * spread
    high, low, close = (np.exp(x)[:, None] for x in (observed.max(1), observed.min(1), observed[:, -1]))
    cs = corwin_schultz_half_spread(high, low, window=bars)[-1, 0]
    ar = abdi_ranaldo_half_spread(high, low, close, window=bars)[-1, 0]
    assert ar == pytest.approx(spread / 2, rel=0.25)
    assert cs == pytest.approx(spread / 2, rel=0.5)


def median_half_spreads_bps(bars: pd.DataFrame, time_column: str, tic: str) -> tuple[float, float]:
    one = bars[bars["tic"] == tic].sort_values(time_column)
    high, low, close = (one[[name]].to_numpy(dtype=float) for name in ("high", "low", "close"))
    cs = corwin_schultz_half_spread(high, low)[1:, 0]
    ar = abdi_ranaldo_half_spread(high, low, close)[1:, 0]
    return float(np.median(cs) * 1e4), float(np.median(ar) * 1e4)


def test_estimators_are_sane_on_real_minute_and_daily_bars():
    minutes = read_bars(_require(MINUTE_FILE), ["SPY", "QQQ", "AAPL", "MSFT", "JPM"], validate=False)
    daily = pd.read_csv(_require(DAILY_FILE), usecols=["date", "tic", "high", "low", "close"])
    found = {}
    for tic in ["SPY", "QQQ", "AAPL", "MSFT", "JPM"]:
        found["1min", tic] = median_half_spreads_bps(minutes, "timestamp", tic)
    for tic in ["MSFT", "JPM", "KO"]:
        found["daily", tic] = median_half_spreads_bps(daily, "date", tic)
    print({f"{k[0]} {k[1]}": tuple(round(v, 2) for v in value) for k, value in found.items()})
    # Minute bars of the most liquid US names: one cent on $100-$275 is 0.2-0.5 bps of half-spread.
    for (freq, tic), (cs, ar) in found.items():
        if freq == "1min":
            assert 0.05 < cs < 2.0 and 0.05 < ar < 2.0, (tic, cs, ar)
        else:  # daily high-low ranges carry a day's volatility: biased far above the true spread
            assert 5.0 < cs < 50.0 and 5.0 < ar < 50.0, (tic, cs, ar)


# --------------------------------------------------------------------------------- quoted spread in the costs


def quoted_market(with_quotes: bool) -> MarketArrays:
    """A 4-date, 2-asset panel; with SYNTHETIC closing quotes 4 and 30 bps wide on date 1 (the decision)."""
    dates = pd.date_range("2024-01-02", periods=4, freq="B")
    close = np.array([[100.0, 50.0], [101.0, 50.5], [102.0, 50.0], [101.5, 50.2]])
    open_ = close * 0.999
    high, low = close * 1.01, close * 0.985
    bid = ask = None
    if with_quotes:
        bid, ask = close * (1 - 2e-4), close * (1 + 2e-4)
        bid[1, 1], ask[1, 1] = 50.5 * (1 - 15e-4), 50.5 * (1 + 15e-4)
    return MarketArrays(
        dates=dates,
        tickers=("AAA", "BBB"),
        feature_names=(),
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=np.full((4, 2), 1e6),
        features=np.zeros((4, 0, 2)),
        turbulence=np.zeros(4),
        bid=bid,
        ask=ask,
    )


FRICTIONLESS_BUT_SPREAD = SimulationConfig(
    cost_model=CostModel(ZeroCommission(), NoImpact()),
    execution=ExecutionConfig(participation_cap=None, whole_shares=False),
    risk=None,
)


@pytest.mark.parametrize("with_quotes", [True, False])
def test_the_simulator_charges_the_quoted_half_spread_when_quotes_exist(with_quotes):
    market = quoted_market(with_quotes)
    simulator = PortfolioSimulator(market, FRICTIONLESS_BUT_SPREAD)
    simulator.reset()
    simulator.step(np.zeros((1, 2)))  # date 0 -> 1
    outcome = simulator.step(np.array([[100.0, 200.0]]))  # decided on date 1
    shares, fill_open = outcome.fills.shares[0], market.open[2]
    if with_quotes:
        half = quote_half_spread(market.bid[1], market.ask[1])
        np.testing.assert_allclose(half, [2e-4, 15e-4], rtol=1e-9)
    else:
        half = corwin_schultz_half_spread(market.high, market.low)[1]
    np.testing.assert_allclose(outcome.fills.spread_cost[0], np.abs(shares) * fill_open * half, rtol=1e-12)
    np.testing.assert_allclose(outcome.fills.price[0], fill_open * (1 + half), rtol=1e-12)


def test_the_simulated_broker_charges_the_quotes_in_force_at_the_decision():
    symbols = ["AAA", "BBB"]
    when = pd.date_range("2024-01-02 14:31", periods=3, freq="1min", tz="UTC")
    bars = [
        {s: Bar(p, p * 1.002, p * 0.997, p * 1.001, 1e6) for s, p in zip(symbols, prices, strict=True)}
        for prices in ([100.0, 50.0], [100.2, 50.1], [100.1, 50.3])
    ]
    # SYNTHETIC quotes at the decision bar's end: AAA 4 bps wide, BBB has none.
    quotes = {"AAA": Quote(99.98, 100.02, 300, 400, when[1])}

    def run(with_quotes: bool, spread: str = "auto"):
        config = SimulationConfig(
            cost_model=CostModel(ZeroCommission(), NoImpact()),
            spread=spread,
            execution=ExecutionConfig(participation_cap=None, whole_shares=False),
            risk=None,
        )
        broker = SimulatedBroker(symbols, config)
        broker.on_bar(when[0], bars[0])
        broker.on_bar(when[1], bars[1], quotes if with_quotes else None)
        for symbol in symbols:
            broker.submit_order(OrderRequest(f"buy-{symbol}", symbol, "buy", 10))
        restored = SimulatedBroker.from_snapshot(json.loads(json.dumps(broker.snapshot())), config)
        fills = {f.symbol: f for f in broker.on_bar(when[2], bars[2])}
        assert {
            f.symbol: f for f in restored.on_bar(when[2], bars[2])
        } == fills  # the snapshot keeps the quote
        return fills

    quoted, unquoted = run(True), run(False)
    cs_bbb = unquoted["BBB"].spread_cost / (10 * bars[2]["BBB"].open)
    assert quoted["AAA"].spread_cost == pytest.approx(10 * 100.1 * 0.04 / 200.0, rel=1e-12)
    assert quoted["BBB"] == unquoted["BBB"] and cs_bbb > 0  # no quote: the bar estimate, as before
    assert unquoted["AAA"].spread_cost != quoted["AAA"].spread_cost
    # Other spread sources ignore quotes.
    assert run(True, "corwin_schultz") == run(False, "corwin_schultz")
