"""The CNN-LSTM forecaster on the real slice: causal outputs, train-only statistics, reproducible training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from trading_core.data.schema import feature_columns_of
from trading_core.features.batch import build_features
from trading_core.models.cnn_lstm import (
    CNNLSTMConfig,
    TrainedForecaster,
    add_learned_features,
    evaluate_forecaster,
    learned_features,
    train_cnn_lstm,
)

SMALL = CNNLSTMConfig(
    window=10, conv_channels=8, kernel_size=3, lstm_hidden=16, embedding_dim=3, max_epochs=3, patience=10
)


@pytest.fixture(scope="module")
def features(slice_bars) -> pd.DataFrame:
    return build_features(slice_bars)


@pytest.fixture(scope="module")
def dates(features) -> np.ndarray:
    return np.sort(features["date"].unique())


@pytest.fixture(scope="module")
def splits(features, dates) -> dict[str, pd.DataFrame]:
    train = features[features["date"] < dates[600]].reset_index(drop=True)
    validation = features[(features["date"] >= dates[600]) & (features["date"] < dates[800])]
    test = features[features["date"] >= dates[800]]
    return {
        "train": train,
        "validation": validation.reset_index(drop=True),
        "test": test.reset_index(drop=True),
    }


@pytest.fixture(scope="module")
def forecaster(splits) -> TrainedForecaster:
    return train_cnn_lstm(splits["train"], splits["validation"], SMALL)


@pytest.fixture(scope="module")
def full_learned(forecaster, features) -> pd.DataFrame:
    return learned_features(forecaster, features)


def _perturbed_after(frame: pd.DataFrame, cutoff: np.datetime64, seed: int = 1) -> pd.DataFrame:
    """Scramble prices, volumes and features strictly after ``cutoff``."""
    changed = frame.copy()
    later = changed["date"] > cutoff
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0.5, 1.5, size=int(later.sum()))
    for column in ("open", "high", "low", "close"):
        changed.loc[later, column] *= noise
    changed.loc[later, "volume"] *= rng.uniform(0.2, 5.0, size=int(later.sum()))
    for column in feature_columns_of(frame):
        changed.loc[later, column] += rng.normal(0.0, frame[column].std(), size=int(later.sum()))
    return changed


def test_config_rejects_a_window_shorter_than_the_convolutions():
    with pytest.raises(ValueError, match="window"):
        CNNLSTMConfig(window=4, kernel_size=3)


def test_learned_features_columns_rows_and_join(forecaster, features, dates, full_learned):
    embedding = [f"cnn_lstm_emb_{i}" for i in range(SMALL.embedding_dim)]
    assert list(full_learned.columns) == ["date", "tic", "cnn_lstm_mean", "cnn_lstm_logvar", *embedding]
    tickers = features["tic"].nunique()
    # Inputs at a date need the previous close, so the first output needs window + 1 dates of the frame.
    assert len(full_learned) == (len(dates) - SMALL.window) * tickers
    assert full_learned["date"].min() == dates[SMALL.window]
    assert not full_learned.isna().any().any()
    assert full_learned["cnn_lstm_mean"].abs().max() < 0.1  # a daily return forecast, in return units
    assert full_learned[embedding].abs().max().max() <= 1.0  # tanh embedding

    joined = add_learned_features(features, full_learned)
    kept = features[features["date"] >= dates[SMALL.window]].reset_index(drop=True)
    assert len(joined) == len(kept)
    pd.testing.assert_frame_equal(joined[list(features.columns)], kept)
    assert joined[["date", "tic"]].equals(joined.sort_values(["date", "tic"])[["date", "tic"]])
    assert set(forecaster.output_columns) <= set(feature_columns_of(joined))
    with pytest.raises(ValueError, match="already hold"):
        add_learned_features(joined, full_learned)


@pytest.mark.parametrize("cut_index", [SMALL.window + 3, 450, 900])
def test_no_lookahead_truncated_data_gives_identical_learned_features(
    forecaster, features, dates, full_learned, cut_index
):
    cutoff = dates[cut_index]
    truncated = learned_features(forecaster, features[features["date"] <= cutoff])
    expected = full_learned[full_learned["date"] <= cutoff].reset_index(drop=True)
    assert truncated["date"].max() == cutoff
    pd.testing.assert_frame_equal(truncated, expected, check_exact=False, rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("cut_index", [300, 700])
def test_no_lookahead_changing_later_data_leaves_earlier_outputs_unchanged(
    forecaster, features, dates, full_learned, cut_index
):
    cutoff = dates[cut_index]
    changed = learned_features(forecaster, _perturbed_after(features, cutoff))
    upto = changed["date"] <= cutoff
    pd.testing.assert_frame_equal(
        changed[upto].reset_index(drop=True),
        full_learned[full_learned["date"] <= cutoff].reset_index(drop=True),
        check_exact=False,
        rtol=0.0,
        atol=1e-6,
    )
    # The perturbation is strong enough to be seen: the outputs after the cutoff do move.
    later = full_learned["date"] > cutoff
    assert not np.allclose(changed.loc[~upto, "cnn_lstm_mean"], full_learned.loc[later, "cnn_lstm_mean"])
    # And the output at the cutoff does read the cutoff's own bar.
    at_cutoff = features.copy()
    at_cutoff.loc[at_cutoff["date"] == cutoff, "close"] *= 1.2
    moved = learned_features(forecaster, at_cutoff)
    on_date = full_learned["date"] == cutoff
    assert not np.allclose(
        moved.loc[moved["date"] == cutoff, "cnn_lstm_mean"], full_learned.loc[on_date, "cnn_lstm_mean"]
    )


def test_normalization_is_fit_on_the_training_frame_only(forecaster, splits, dates):
    train = splits["train"]
    # Independent check of the first input: the log close-to-close return over the training frame.
    log_return = np.log(train.groupby("tic")["close"].pct_change() + 1.0).dropna()
    assert forecaster.normalization.mean[0] == pytest.approx(log_return.mean(), rel=1e-9)
    assert forecaster.normalization.std[0] == pytest.approx(log_return.std(ddof=0), rel=1e-9)
    next_return = train.groupby("tic")["close"].shift(-1) / train["close"] - 1.0
    assert forecaster.normalization.target_mean == pytest.approx(next_return.dropna().mean(), rel=1e-9)

    other_validation = _perturbed_after(splits["validation"], dates[599], seed=7)
    retrained = train_cnn_lstm(train, other_validation, SMALL)
    assert retrained.normalization == forecaster.normalization
    assert retrained.input_columns == forecaster.input_columns
    # Training samples end before the validation period: their losses cannot see the validation prices.
    assert [h["train_loss"] for h in retrained.history] == [h["train_loss"] for h in forecaster.history]
    assert retrained.history[0]["validation_loss"] != forecaster.history[0]["validation_loss"]

    shorter = train_cnn_lstm(train[train["date"] < dates[500]], splits["validation"], SMALL)
    assert shorter.normalization != forecaster.normalization


def test_same_seed_gives_identical_weights_and_features_and_other_seed_differs(
    forecaster, splits, features, full_learned
):
    rng_before = torch.get_rng_state()
    again = train_cnn_lstm(splits["train"], splits["validation"], SMALL)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    first, second = forecaster.module.state_dict(), again.module.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert again.history == forecaster.history
    pd.testing.assert_frame_equal(learned_features(again, features), full_learned, check_exact=True)

    other = train_cnn_lstm(splits["train"], splits["validation"], dataclasses.replace(SMALL, seed=1))
    third = other.module.state_dict()
    assert not all(torch.equal(first[k], third[k]) for k in first)
    assert not np.allclose(learned_features(other, features)["cnn_lstm_mean"], full_learned["cnn_lstm_mean"])


def test_early_stopping_keeps_the_best_epoch(splits):
    config = dataclasses.replace(SMALL, max_epochs=30, patience=1, learning_rate=1e-2)
    lines: list[str] = []
    stopped = train_cnn_lstm(splits["train"], splits["validation"], config, report=lines.append)
    losses = [h["validation_loss"] for h in stopped.history]
    assert len(losses) < config.max_epochs
    assert len(losses) == stopped.best_epoch + config.patience
    assert stopped.best_epoch == int(np.argmin(losses)) + 1
    assert losses[-1] > min(losses)  # the last epoch was worse, yet its weights were not kept
    assert stopped.validation_loss == min(losses)
    rescored = evaluate_forecaster(stopped, splits["validation"], history=splits["train"])
    assert rescored.loss == min(losses)
    assert rescored.directional_accuracy == stopped.directional_accuracy
    assert rescored.information_coefficient == stopped.information_coefficient
    assert len(lines) == len(losses) + 1


def test_metrics_are_in_range(forecaster, splits):
    assert 0.0 <= forecaster.directional_accuracy <= 1.0
    assert -1.0 <= forecaster.information_coefficient <= 1.0
    assert np.isfinite(forecaster.validation_loss)
    on_test = evaluate_forecaster(forecaster, splits["test"], history=splits["validation"])
    tickers = splits["test"]["tic"].nunique()
    # Every test date but the last (no realized next return) is scored, thanks to the validation history.
    assert on_test.n_samples == (splits["test"]["date"].nunique() - 1) * tickers
    assert np.isfinite(on_test.loss)


def test_save_and_load_round_trip_gives_identical_outputs(forecaster, features, full_learned, tmp_path):
    forecaster.save(tmp_path / "cnn_lstm")
    restored = TrainedForecaster.load(tmp_path / "cnn_lstm")
    assert restored.config == forecaster.config
    assert restored.normalization == forecaster.normalization
    assert restored.metadata() == forecaster.metadata()
    pd.testing.assert_frame_equal(learned_features(restored, features), full_learned, check_exact=True)


def test_pipeline_feature_builder_has_no_lookahead(slice_bars):
    from trading_core.data.leakage import spread_cutoffs, truncate_and_compare
    from trading_core.models.cnn_lstm import CNNLSTMConfig, feature_builder, train_cnn_lstm

    features = build_features(slice_bars)
    dates = features["date"].unique()
    train, validation = features[features["date"] < dates[600]], features[features["date"] >= dates[600]]
    forecaster = train_cnn_lstm(train, validation, CNNLSTMConfig(max_epochs=1))
    findings = truncate_and_compare(
        slice_bars, feature_builder(features, forecaster), spread_cutoffs(dates, 2)
    )
    assert findings == []
