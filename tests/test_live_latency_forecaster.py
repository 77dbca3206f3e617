"""The forecaster's live fast path (last date only) equals the batch learned features on real data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.test_cnn_lstm import SMALL
from trading_core.agents.decision_spec import DecisionSpec
from trading_core.data.schema import feature_columns_of
from trading_core.envs.spec import EnvSpec
from trading_core.features.batch import build_features
from trading_core.live.engine import DecisionEngine
from trading_core.models.cnn_lstm import (
    TrainedForecaster,
    add_learned_features,
    latest_learned_features,
    learned_features,
    train_cnn_lstm,
)

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
