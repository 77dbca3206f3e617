"""Streaming features equal build_features, date by date, on real daily and 1-minute bars (train/serve parity)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trading_core.features.batch import balanced_panel, build_features
from trading_core.features.streaming import BAR_FIELDS, FeatureWindow, StreamingFeatures
from trading_core.models.cnn_lstm import CNNLSTMConfig, learned_features, train_cnn_lstm
from trading_core.runtime import stored_json

SHARED_DATA = Path(
    os.environ.get("RL_TRADING_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
INTRADAY_FILE = SHARED_DATA / "intraday_1min_us_equities_2019.csv.gz"
DAILY_TICKERS = ["MSFT", "AAPL", "AMGN", "CVX", "JPM", "KO"]  # deliberately unsorted
# SLV and TRV lack a bar in about one minute out of six: those minutes leave the balanced panel.
INTRADAY_TICKERS = ["AAPL", "JPM", "SLV", "SPY", "TRV"]
# More than turbulence's 252-date window (shorter panels get turbulence 0 throughout).
HISTORY_DATES = 300
INTRADAY_HISTORY_MINUTES = 400  # about 330 complete minutes
RELATIVE_TOLERANCE = 1e-9
Update = tuple[pd.Timestamp, dict[str, tuple[float, ...]]]


@pytest.fixture(scope="module")
def daily_bars(dow30_bars: pd.DataFrame) -> pd.DataFrame:
    """Six Dow tickers, 2016-01 .. 2018-06 (628 dates), validated."""
    from trading_core.data.schema import select_window
    from trading_core.data.validation import to_validated_bars

    return to_validated_bars(select_window(dow30_bars, DAILY_TICKERS, "2016-01-01", "2018-06-30"))


@pytest.fixture(scope="module")
def daily_features(daily_bars: pd.DataFrame) -> pd.DataFrame:
    return build_features(daily_bars)


@pytest.fixture(scope="module")
def vix_series(vix_file: Path) -> pd.Series:
    vix = pd.read_csv(vix_file, usecols=["date", "close"], parse_dates=["date"])
    return vix.set_index("date")["close"]


@pytest.fixture(scope="module")
def intraday_bars() -> pd.DataFrame:
    """The first 800 one-minute timestamps of five tickers; each minute plays the role of a date."""
    if not INTRADAY_FILE.exists():
        pytest.skip(
            f"real market data {INTRADAY_FILE} not found (set RL_TRADING_SHARED_DATA to the shared/data folder)"
        )
    bars = pd.read_csv(INTRADAY_FILE, parse_dates=["datetime"]).rename(columns={"datetime": "date"})
    bars = bars[bars["tic"].isin(INTRADAY_TICKERS)]
    bars = bars[bars["date"].isin(np.sort(bars["date"].unique())[:800])]
    bars = bars.astype({field: "float64" for field in BAR_FIELDS})
    return bars.sort_values(["date", "tic"], ignore_index=True)


def _updates(bars: pd.DataFrame) -> Iterator[Update]:
    """One (date, {tic: (open, high, low, close, volume)}) per date, as the live loop receives them."""
    for date, group in bars.groupby("date", sort=True):
        rows = group.loc[:, ["tic", *BAR_FIELDS]].itertuples(index=False)
        yield pd.Timestamp(date), {tic: tuple(values) for tic, *values in rows}


def _stream(
    features: StreamingFeatures, bars: pd.DataFrame, vix: pd.Series | None = None
) -> tuple[pd.DataFrame, list[pd.Timestamp]]:
    """Feed bars date by date (and VIX closes as they become known); return emitted rows and silent dates."""
    emitted, silent = [], []
    previous = pd.Timestamp.min
    for date, bar_map in _updates(bars):
        today = None
        if vix is not None:
            for vix_date, value in vix[(vix.index > previous) & (vix.index < date)].items():
                features.record_vix(vix_date, value)
            today = vix.get(date)
        previous = date
        rows = features.update(date, bar_map, vix=today)
        if rows is None:
            silent.append(date)
        else:
            emitted.append(rows)
    return pd.concat(emitted, ignore_index=True), silent


def _history_and_rest(bars: pd.DataFrame, n_history: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    split = np.sort(bars["date"].unique())[n_history]
    return bars[bars["date"] < split], bars[bars["date"] >= split]


def assert_rows_match(streamed: pd.DataFrame, batch: pd.DataFrame) -> None:
    """Same columns, dtypes, dates and tickers; every value within 1e-9 relative (1e-9 absolute below 1)."""
    batch = batch.reset_index(drop=True)
    streamed = streamed.reset_index(drop=True)
    assert list(streamed.columns) == list(batch.columns)
    pd.testing.assert_series_equal(streamed.dtypes, batch.dtypes)
    pd.testing.assert_frame_equal(streamed[["date", "tic"]], batch[["date", "tic"]])
    for column in batch.columns[2:]:
        expected = batch[column].to_numpy()
        difference = np.abs(streamed[column].to_numpy() - expected)
        bound = RELATIVE_TOLERANCE * np.maximum(1.0, np.abs(expected))
        assert (difference <= bound).all(), f"{column}: max difference {difference.max():.3e}"


def _sample_dates(dates: np.ndarray, count: int, seed: int) -> list[pd.Timestamp]:
    """First, last and ``count`` random dates (each prefix build_features costs a few hundred ms)."""
    chosen = np.random.default_rng(seed).choice(dates[1:-1], size=count, replace=False)
    return [pd.Timestamp(d) for d in sorted({dates[0], dates[-1], *chosen})]


def _assert_equals_batch_up_to_each_date(
    streamed: pd.DataFrame, bars: pd.DataFrame, dates: list[pd.Timestamp]
) -> None:
    for date in dates:
        prefix = build_features(bars[bars["date"] <= date])
        assert_rows_match(streamed[streamed["date"] == date], prefix[prefix["date"] == date])


def test_daily_stream_equals_batch_features_on_full_data_and_on_data_up_to_each_date(
    daily_bars, daily_features
):
    history, rest = _history_and_rest(daily_bars, HISTORY_DATES)
    features = StreamingFeatures(DAILY_TICKERS, history=history)
    streamed, silent = _stream(features, rest)

    assert silent == []
    batch = daily_features[daily_features["date"] >= rest["date"].min()]
    assert_rows_match(streamed, batch)
    assert (streamed["turbulence"] > 0).mean() > 0.9  # the turbulence path is exercised, not its zero warm-up
    emitted_dates = np.sort(streamed["date"].unique())
    _assert_equals_batch_up_to_each_date(streamed, daily_bars, _sample_dates(emitted_dates, 8, seed=0))


def test_intraday_stream_equals_batch_and_skips_minutes_missing_a_ticker(intraday_bars):
    history, rest = _history_and_rest(intraday_bars, INTRADAY_HISTORY_MINUTES)
    features = StreamingFeatures(INTRADAY_TICKERS, history=history)
    streamed, silent = _stream(features, rest)

    # The stream keeps balanced_panel's rule (a minute missing a ticker never happened); batch features keep it.
    balanced = balanced_panel(intraday_bars)
    full = build_features(balanced)
    assert_rows_match(streamed, full[full["date"] >= rest["date"].min()])
    incomplete = rest.groupby("date")["tic"].nunique() < len(INTRADAY_TICKERS)
    assert incomplete.sum() > 50
    # balanced_panel drops those minutes (nothing is forward-filled); the stream emits nothing for them.
    assert silent == list(incomplete.index[incomplete])
    emitted_dates = np.sort(streamed["date"].unique())
    _assert_equals_batch_up_to_each_date(streamed, balanced, _sample_dates(emitted_dates, 6, seed=1))


def test_without_history_warm_up_emits_exactly_the_dates_batch_keeps_on_data_up_to_them(daily_bars):
    first_dates = np.sort(daily_bars["date"].unique())[:40]
    # Without turbulence: on panels shorter than 252 dates it is 0 anyway.
    features = StreamingFeatures(DAILY_TICKERS, use_turbulence=False)
    emitted = 0
    for date, bar_map in _updates(daily_bars[daily_bars["date"].isin(first_dates)]):
        rows = features.update(date, bar_map)
        prefix = build_features(daily_bars[daily_bars["date"] <= date], use_turbulence=False)
        expected = prefix[prefix["date"] == date]
        if expected.empty:
            assert rows is None, f"{date}: batch drops this warm-up date"
        else:
            assert rows is not None, f"{date}: batch keeps this date"
            assert_rows_match(rows, expected)
            emitted += 1
    assert 0 < emitted < len(first_dates)  # cci_30 needs 30 dates; the rest are emitted


def test_stream_from_the_first_bar_matches_batch_through_the_turbulence_warm_up(daily_bars, daily_features):
    features = StreamingFeatures(DAILY_TICKERS)
    streamed, silent = _stream(features, daily_bars)

    dates = np.sort(daily_bars["date"].unique())
    # Data up to date t < 29 lacks cci_30's window; on the whole data stockstats zero-fills those rows instead.
    assert silent == [pd.Timestamp(d) for d in dates[:29]]
    assert_rows_match(streamed, daily_features[daily_features["date"] >= dates[29]])
    turbulence = streamed.groupby("date")["turbulence"].first()
    assert (turbulence.iloc[: 252 - 29] == 0).all() and (turbulence.iloc[252 - 29 + 3 :] > 0).all()


def test_vix_is_the_latest_close_known_at_each_date_like_the_batch_join(daily_bars, vix_series):
    history, rest = _history_and_rest(daily_bars, HISTORY_DATES)
    known = vix_series[vix_series.index < rest["date"].min()]
    features = StreamingFeatures(DAILY_TICKERS, history=history, use_vix=True, vix_history=known)
    streamed, silent = _stream(features, rest, vix_series[vix_series.index >= rest["date"].min()])

    assert silent == []
    batch = build_features(daily_bars, vix=vix_series)
    assert_rows_match(streamed, batch[batch["date"] >= rest["date"].min()])
    assert streamed.columns[-1] == "vix"


def test_other_indicators_and_no_turbulence_match_batch(daily_bars):
    indicators = [
        "macd",
        "macds",
        "macdh",
        "boll",
        "boll_ub",
        "boll_lb",
        "rsi",
        "rsi_6",
        "cci",
        "dx",
        "dx_1",
        "close_10_ema",
        "volume_5_sma",
        "high_3_sma",
    ]
    bars = daily_bars[daily_bars["date"] < np.sort(daily_bars["date"].unique())[250]]
    history, rest = _history_and_rest(bars, 100)
    features = StreamingFeatures(DAILY_TICKERS, indicators, use_turbulence=False, history=history)
    streamed, _ = _stream(features, rest)

    batch = build_features(bars, indicators, use_turbulence=False)
    assert_rows_match(streamed, batch[batch["date"] >= rest["date"].min()])


def test_a_date_missing_one_ticker_is_skipped_like_balanced_panel(daily_bars):
    bars = daily_bars[daily_bars["date"] < np.sort(daily_bars["date"].unique())[360]]
    history, rest = _history_and_rest(bars, HISTORY_DATES)
    gap_date = np.sort(rest["date"].unique())[10]
    gappy = bars.drop(index=bars.index[(bars["date"] == gap_date) & (bars["tic"] == "KO")])
    features = StreamingFeatures(DAILY_TICKERS, history=history)
    streamed, silent = _stream(features, gappy[gappy["date"] >= rest["date"].min()])

    assert silent == [pd.Timestamp(gap_date)]
    batch = build_features(balanced_panel(gappy))
    assert_rows_match(streamed, batch[batch["date"] >= rest["date"].min()])


def test_snapshot_round_trip_continues_identically(daily_bars, vix_series):
    history, rest = _history_and_rest(daily_bars, HISTORY_DATES)
    updates = list(_updates(rest))
    original = StreamingFeatures(
        DAILY_TICKERS,
        history=history,
        keep_dates=32,
        use_vix=True,
        vix_history=vix_series[vix_series.index < rest["date"].min()],
    )
    for date, bar_map in updates[:50]:
        original.update(date, bar_map, vix=vix_series[date])
    original.record_vix(updates[50][0], vix_series[updates[50][0]])  # queued, not yet used by a date

    snapshot = original.snapshot()
    # Through the stored JSON text, as the live loop saves it.
    text = stored_json.dumps("features", 1, snapshot)
    assert stored_json.dumps("features", 1, stored_json.loads(text, "features", 1, "test")) == text
    restored = StreamingFeatures.from_snapshot(stored_json.loads(text, "features", 1, "test"))
    frame_at_snapshot = restored.latest_frame(32)

    assert restored.last_date == original.last_date
    pd.testing.assert_frame_equal(restored.latest_frame(32), original.latest_frame(32))
    for index, (date, bar_map) in enumerate(updates[50:]):
        vix = None if index == 0 else vix_series[date]
        pd.testing.assert_frame_equal(
            restored.update(date, bar_map, vix=vix), original.update(date, bar_map, vix=vix)
        )
    pd.testing.assert_frame_equal(restored.latest_frame(32), original.latest_frame(32))
    # The snapshot is a copy: the original moving on did not change it.
    pd.testing.assert_frame_equal(
        StreamingFeatures.from_snapshot(snapshot).latest_frame(32), frame_at_snapshot
    )


def test_latest_frame_holds_the_last_emitted_dates(daily_bars, daily_features):
    history, rest = _history_and_rest(daily_bars, HISTORY_DATES)
    features = StreamingFeatures(DAILY_TICKERS, history=history, keep_dates=40)
    # Warm-up from history alone already fills the buffer, before any live bar.
    last_history = daily_features[daily_features["date"] < rest["date"].min()]
    assert_rows_match(
        features.latest_frame(5), last_history[last_history["date"].isin(last_history["date"].unique()[-5:])]
    )
    _stream(features, rest)

    last_dates = np.sort(daily_features["date"].unique())[-21:]
    assert_rows_match(features.latest_frame(21), daily_features[daily_features["date"].isin(last_dates)])
    with pytest.raises(ValueError, match="keep_dates"):
        features.latest_frame(41)

    first_dates = np.sort(daily_bars["date"].unique())[:35]
    young = StreamingFeatures(DAILY_TICKERS, history=daily_bars[daily_bars["date"].isin(first_dates)])
    # Only what was emitted: the 30th to 35th dates (cci_30 needs 30 dates).
    pd.testing.assert_index_equal(
        pd.DatetimeIndex(young.latest_frame(21)["date"].unique()), pd.DatetimeIndex(first_dates[29:])
    )


def test_latest_window_holds_the_latest_frame_as_read_only_arrays(daily_bars):
    history, rest = _history_and_rest(daily_bars, HISTORY_DATES)
    features = StreamingFeatures(DAILY_TICKERS, history=history, keep_dates=40)
    for date, bar_map in list(_updates(rest))[:90]:  # past the buffer's compaction (twice keep_dates)
        features.update(date, bar_map)
        frame, window = features.latest_frame(21), features.latest_window(21)
        assert window.tickers == features.tickers and window.columns == features.value_columns
        # The frame is built from the window's very arrays: equal bit for bit, dates included.
        np.testing.assert_array_equal(
            window.rows.reshape(-1, len(window.columns)), frame.iloc[:, 2:].to_numpy()
        )
        np.testing.assert_array_equal(
            window.dates_ns, frame["date"].unique().astype("datetime64[ns]").view("i8")
        )
    with pytest.raises(ValueError, match="read-only"):
        window.rows[0, 0, 0] = 0.0
    with pytest.raises(ValueError, match="keep_dates"):
        features.latest_window(41)
    assert window.last(5).n_dates == 5 and window.last(50).n_dates == 21
    np.testing.assert_array_equal(window.last(5).rows, window.rows[-5:])


def test_a_window_from_a_frame_equals_the_stream_window_and_marks_missing_rows(daily_bars):
    history, _ = _history_and_rest(daily_bars, HISTORY_DATES)
    features = StreamingFeatures(DAILY_TICKERS, history=history)
    window = features.latest_window(10)
    frame = features.latest_frame(10)
    columns = ["close", "macd", "turbulence"]
    positions = [window.columns.index(c) for c in columns]
    shuffled = frame.sample(frac=1.0, random_state=0)  # row order does not matter
    from_frame = FeatureWindow.from_frame(shuffled, columns, features.tickers)
    np.testing.assert_array_equal(from_frame.dates_ns, window.dates_ns)
    np.testing.assert_array_equal(from_frame.rows, window.rows[:, :, positions])
    # Timezone-aware dates are instants: their nanoseconds since the epoch (UTC).
    aware = frame.assign(date=frame["date"].dt.tz_localize("America/New_York"))
    expected = pd.DatetimeIndex(aware["date"].unique()).asi8
    np.testing.assert_array_equal(FeatureWindow.from_frame(aware, columns).dates_ns, expected)
    # A missing (date, tic) row is NaN; another ticker's rows are ignored; a duplicate is refused.
    gap = frame[~((frame["tic"] == "KO") & (frame["date"] == frame["date"].max()))]
    ragged = FeatureWindow.from_frame(
        gap.assign(tic=gap["tic"].replace("CVX", "XOM")), columns, features.tickers
    )
    ko, cvx = features.tickers.index("KO"), features.tickers.index("CVX")
    assert np.isnan(ragged.rows[-1, ko]).all() and np.isnan(ragged.rows[:, cvx]).all()
    assert np.isfinite(np.delete(ragged.rows[:-1], cvx, axis=1)).all()
    with pytest.raises(ValueError, match="more than one row"):
        FeatureWindow.from_frame(pd.concat([frame, frame.tail(1)]), columns)
    with pytest.raises(ValueError, match="lacks columns"):
        FeatureWindow.from_frame(frame, ["vix"])


def test_latest_frame_gives_the_forecaster_its_batch_output(daily_features, daily_bars):
    config = CNNLSTMConfig(
        window=5, conv_channels=4, kernel_size=2, lstm_hidden=8, embedding_dim=2, max_epochs=1, seed=0
    )
    dates = np.sort(daily_features["date"].unique())
    forecaster = train_cnn_lstm(
        daily_features[daily_features["date"] < dates[200]],
        daily_features[(daily_features["date"] >= dates[200]) & (daily_features["date"] < dates[300])],
        config,
    )
    history, rest = _history_and_rest(daily_bars, HISTORY_DATES)
    features = StreamingFeatures(DAILY_TICKERS, history=history)
    for date, bar_map in list(_updates(rest))[:40]:
        features.update(date, bar_map)

    # The first of the window's dates needs the previous close, hence window + 1 dates.
    live = learned_features(forecaster, features.latest_frame(config.window + 1))
    batch = learned_features(forecaster, daily_features)
    assert live["date"].nunique() == 1
    expected = batch[batch["date"] == live["date"].iloc[0]]
    pd.testing.assert_frame_equal(live.reset_index(drop=True), expected.reset_index(drop=True), atol=1e-6)


def test_output_layout_equals_build_features_for_timezone_aware_dates(daily_bars):
    bars = daily_bars[daily_bars["date"] < np.sort(daily_bars["date"].unique())[60]].copy()
    bars["date"] = bars["date"].dt.tz_localize("America/New_York")
    history, rest = _history_and_rest(bars, 40)
    features = StreamingFeatures(DAILY_TICKERS, use_turbulence=False, history=history)
    streamed, _ = _stream(features, rest)

    batch = build_features(bars, use_turbulence=False)
    assert_rows_match(streamed, batch[batch["date"] >= rest["date"].min()])
    assert list(features.tickers) == sorted(DAILY_TICKERS)


def test_invalid_inputs_are_rejected(daily_bars):
    history, rest = _history_and_rest(daily_bars[daily_bars["date"] < "2017-01-01"], 100)
    with pytest.raises(ValueError, match="no streaming implementation"):
        StreamingFeatures(DAILY_TICKERS, indicators=["kdjk"])
    with pytest.raises(ValueError, match="unique"):
        StreamingFeatures(["AAPL", "AAPL"])
    features = StreamingFeatures(DAILY_TICKERS, history=history)
    with pytest.raises(ValueError, match="increase"):
        features.update(history["date"].max(), {})
    date, bar_map = next(_updates(rest))
    broken = {**bar_map, "KO": (1.0, 1.0, 1.0, float("nan"), 1.0)}
    with pytest.raises(ValueError, match="non-finite"):
        features.update(date, broken)
    # A rejected bar leaves no trace: the same date goes through once the bar is fixed.
    assert features.update(date, bar_map) is not None
    with pytest.raises(ValueError, match="window must be"):
        features.latest_frame(0)
    with pytest.raises(ValueError, match="snapshot version"):
        StreamingFeatures.from_snapshot({**features.snapshot(), "version": 0})
