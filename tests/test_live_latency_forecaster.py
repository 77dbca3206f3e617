"""The forecaster's live fast path (last date only, from the stream's arrays) equals the batch learned features on
real data, and a restarted process decides on the same bits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.test_cnn_lstm import SMALL
from trading_core.agents.decision_spec import DecisionSpec
from trading_core.data.schema import feature_columns_of
from trading_core.envs.spec import EnvSpec
from trading_core.features.batch import build_features
from trading_core.features.streaming import BAR_FIELDS, StreamingFeatures
from trading_core.live.engine import DecisionEngine
from trading_core.models.cnn_lstm import (
    TrainedForecaster,
    add_learned_features,
    latest_learned_features,
    learned_features,
    train_cnn_lstm,
)
from trading_core.runtime import stored_json

ATOL = 1e-6


@pytest.fixture(scope="module")
def features(slice_bars) -> pd.DataFrame:
    return build_features(slice_bars)


@pytest.fixture(scope="module")
def dates(features) -> np.ndarray:
    return np.sort(features["date"].unique())


@pytest.fixture(scope="module")
def forecaster(features, dates) -> TrainedForecaster:
    train = features[features["date"] < dates[600]]
    validation = features[(features["date"] >= dates[600]) & (features["date"] < dates[800])]
    return train_cnn_lstm(train, validation, SMALL)


@pytest.fixture(scope="module")
def engine(features, forecaster) -> DecisionEngine:
    learned = add_learned_features(features, learned_features(forecaster, features))
    spec = DecisionSpec(
        tuple(sorted(features["tic"].unique())),
        tuple(feature_columns_of(learned)),
        EnvSpec(),
        forecaster_uri="models:/cnn_lstm/1",
    )
    return DecisionEngine(None, spec, forecaster)


def _trailing(features: pd.DataFrame, dates: np.ndarray, end: int, n_dates: int) -> pd.DataFrame:
    """The rows of the ``n_dates`` dates ending at ``dates[end]`` (what the live stream hands the engine)."""
    kept = dates[max(end - n_dates + 1, 0) : end + 1]
    return features[features["date"].isin(kept)].reset_index(drop=True)


def _batch_last_date(forecaster: TrainedForecaster, recent: pd.DataFrame) -> pd.DataFrame:
    learned = learned_features(forecaster, recent)
    return learned[learned["date"] == recent["date"].max()].reset_index(drop=True)


def _batch_feature_rows(engine: DecisionEngine, recent: pd.DataFrame) -> pd.DataFrame | None:
    """What DecisionEngine.feature_rows returned before the fast path: the batch function over all of ``recent``."""
    learned = learned_features(engine.forecaster, recent)
    if learned.empty:
        return None
    last_date = recent["date"].max()
    rows = add_learned_features(recent[recent["date"] == last_date], learned[learned["date"] == last_date])
    return rows if len(rows) == len(engine.spec.tickers) else None


def _ragged(frame: pd.DataFrame, tic: str, date) -> pd.DataFrame:
    return frame[~((frame["tic"] == tic) & (frame["date"] == date))].reset_index(drop=True)


@pytest.mark.parametrize("end", [SMALL.window, SMALL.window + 1, 250, 700, 1000, -1])
@pytest.mark.parametrize("extra", [0, 15])
def test_last_date_equals_the_batch_rows(forecaster, features, dates, end, extra):
    end = end % len(dates)
    recent = _trailing(features, dates, end, SMALL.window + 1 + extra)
    expected = _batch_last_date(forecaster, recent)
    latest = latest_learned_features(forecaster, recent)
    assert len(expected) == len(features["tic"].unique())
    pd.testing.assert_frame_equal(latest.frame(), expected, check_exact=False, atol=ATOL, rtol=0)


def test_warm_up_gives_nothing_like_the_batch(forecaster, features, dates):
    recent = _trailing(features, dates, 500, SMALL.window)
    assert latest_learned_features(forecaster, recent) is None
    assert learned_features(forecaster, recent).empty


@pytest.mark.parametrize("missing_at", [0, 5, -1])
def test_a_ticker_missing_a_row_in_its_window_is_left_out_like_the_batch(
    forecaster, features, dates, missing_at
):
    recent = _trailing(features, dates, 900, SMALL.window + 3)
    recent_dates = np.sort(recent["date"].unique())
    ragged = _ragged(recent, "JPM", recent_dates[-(SMALL.window + 1) :][missing_at])
    expected = _batch_last_date(forecaster, ragged)
    latest = latest_learned_features(forecaster, ragged)
    assert "JPM" not in set(expected["tic"]) and len(expected) == 3
    pd.testing.assert_frame_equal(latest.frame(), expected, check_exact=False, atol=ATOL, rtol=0)


@pytest.mark.parametrize("end", [SMALL.window, 300, 800, -1])
def test_feature_rows_equal_the_batch_join(engine, features, dates, end):
    recent = _trailing(features, dates, end % len(dates), engine.history_dates)
    expected = _batch_feature_rows(engine, recent)
    assert expected is not None
    pd.testing.assert_frame_equal(engine.feature_rows(recent), expected, check_exact=False, atol=ATOL, rtol=0)
    matrix, columns = engine.feature_matrix(recent)
    np.testing.assert_allclose(
        matrix, expected.sort_values("tic")[list(columns)].to_numpy(np.float64), atol=ATOL, rtol=0
    )


def test_feature_rows_on_timezone_aware_dates_and_ragged_or_short_history(engine, features, dates):
    recent = _trailing(features, dates, 1100, engine.history_dates + 4)
    aware = recent.assign(date=recent["date"].dt.tz_localize("UTC"))
    pd.testing.assert_frame_equal(
        engine.feature_rows(aware), _batch_feature_rows(engine, aware), check_exact=False, atol=ATOL, rtol=0
    )
    ragged = _ragged(aware, "KO", np.sort(aware["date"].unique())[-3])
    assert _batch_feature_rows(engine, ragged) is None and engine.feature_rows(ragged) is None
    short = _trailing(features, dates, 1100, engine.history_dates - 1)
    assert _batch_feature_rows(engine, short) is None and engine.feature_rows(short) is None


def _stream_until(engine: DecisionEngine, bars: pd.DataFrame, date) -> StreamingFeatures:
    """The live loop's stream after the bars of every date up to ``date``."""
    return StreamingFeatures(engine.spec.tickers, history=bars[bars["date"] <= date])


def _bar_maps(bars: pd.DataFrame, dates: np.ndarray):
    for date in dates:
        rows = bars.loc[bars["date"] == date, ["tic", *BAR_FIELDS]].itertuples(index=False)
        yield pd.Timestamp(date), {tic: tuple(values) for tic, *values in rows}


@pytest.mark.parametrize("end", [300, 800, -1])
def test_the_stream_window_gives_the_frame_matrix_bit_for_bit_and_the_batch_one(
    engine, slice_bars, features, dates, end
):
    end = end % len(dates)
    stream = _stream_until(engine, slice_bars, dates[end])
    matrix, columns = engine.feature_matrix(stream.latest_window(engine.history_dates))
    from_frame, frame_columns = engine.feature_matrix(stream.latest_frame(engine.history_dates))
    assert columns == frame_columns == tuple(engine.spec.observation_columns[2:])
    np.testing.assert_array_equal(matrix, from_frame)
    expected = _batch_feature_rows(engine, _trailing(features, dates, end, engine.history_dates))
    # The stream's features equal the batch ones within 1e-9 relative, the forecast within 1e-6.
    batch = expected.sort_values("tic")[list(columns)].to_numpy(np.float64)
    np.testing.assert_allclose(matrix, batch, atol=ATOL, rtol=1e-9)


def test_the_forecast_from_arrays_equals_the_frame_forecast_bit_for_bit(engine, slice_bars, dates):
    stream = _stream_until(engine, slice_bars, dates[900])
    window = stream.latest_window(engine.history_dates)
    latest = latest_learned_features(engine.forecaster, stream.latest_frame(engine.history_dates))
    np.testing.assert_array_equal(engine.learned_values(window), latest.values)
    assert engine.learned_values(window.last(engine.history_dates - 1)) is None  # warming up


def test_a_restarted_process_decides_on_the_same_bits(engine, slice_bars, dates):
    running = _stream_until(engine, slice_bars, dates[700])
    # A restart: the stream comes back from its stored JSON snapshot, the engine is a fresh one.
    text = stored_json.dumps("features", 1, running.snapshot())
    restarted = StreamingFeatures.from_snapshot(stored_json.loads(text, "features", 1, "test"))
    fresh = DecisionEngine(
        None, engine.spec, TrainedForecaster.from_state(*engine.forecaster.state_for_saving())
    )
    for date, bar_map in _bar_maps(slice_bars, dates[701:712]):
        running.update(date, bar_map)
        restarted.update(date, bar_map)
        expected, _ = engine.feature_matrix(running.latest_window(engine.history_dates))
        matrix, _ = fresh.feature_matrix(restarted.latest_window(fresh.history_dates))
        np.testing.assert_array_equal(matrix, expected)
