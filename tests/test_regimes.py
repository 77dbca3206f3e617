"""Causal market regimes: signals, the HMM fitted on training dates, its forward filter, batch == streaming."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hmmlearn.hmm import GaussianHMM

from tests.conftest import SHARED_DATA, _require
from trading_assets.regimes import RegimeSettings, market_regimes
from trading_core.data.splits import DatasetSplits, apply_split, make_date_split
from trading_core.regimes import (
    RegimeConfig,
    RegimeFilter,
    RegimeModel,
    RegimeStream,
    market_signals,
    regime_changes,
)
from trading_core.regimes.history import (
    MarketRegimes,
    add_regime_features,
    fit_market_regimes,
    regime_feature_builder,
)
from trading_core.regimes.signals import MarketSignalStream

SP500_TRAIN_END = "2015-12-31"  # 2020 stays out of sample


@pytest.fixture(scope="module")
def sp500_bars() -> pd.DataFrame:
    """The S&P 500 index as a one-ticker bar frame (2005-2021)."""
    frame = pd.read_csv(_require(SHARED_DATA / "sp500_index_daily_2005_2021.csv.gz"), parse_dates=["date"])
    return frame.assign(tic="^GSPC")[["date", "tic", "close"]]


@pytest.fixture(scope="module")
def sp500_signals(sp500_bars: pd.DataFrame) -> pd.DataFrame:
    return market_signals(sp500_bars)


@pytest.fixture(scope="module")
def sp500_model(sp500_signals: pd.DataFrame) -> RegimeModel:
    return RegimeModel.fit(sp500_signals, RegimeConfig(), train_end=SP500_TRAIN_END)


@pytest.fixture(scope="module")
def slice_model(slice_bars: pd.DataFrame) -> RegimeModel:
    return RegimeModel.fit(market_signals(slice_bars), RegimeConfig(), train_end="2017-12-31")


def test_market_signals_are_the_equal_weight_return_and_its_trailing_std() -> None:
    dates = pd.bdate_range("2021-03-01", periods=8)
    closes = {"AAA": [10, 11, 12, 11, 13, 12, 12, 14], "BBB": [20, 19, 21, 22, 20, 21, 23, 22]}
    bars = pd.DataFrame(
        [{"date": d, "tic": t, "close": float(c[i])} for t, c in closes.items() for i, d in enumerate(dates)]
    )
    bars = bars[~((bars["tic"] == "BBB") & (bars["date"] == dates[3]))]  # BBB misses one date
    signals = market_signals(bars, volatility_window=3)
    wide = bars.pivot(index="date", columns="tic", values="close")
    expected = wide.pct_change(fill_method=None).mean(axis=1, skipna=True)
    expected.iloc[0] = np.nan
    np.testing.assert_allclose(signals["market_return"], expected, rtol=1e-14)
    # Only AAA trades both 2021-03-03/04 and 2021-03-04/05: BBB's returns around its gap are left out.
    assert signals["market_return"].iloc[3] == pytest.approx(11 / 12 - 1)
    assert signals["market_return"].iloc[4] == pytest.approx(13 / 11 - 1)
    rolling = expected.rolling(3).std()
    np.testing.assert_allclose(signals["market_volatility"], rolling, rtol=1e-12)
    assert signals.index.name == "date" and signals["market_volatility"].isna().sum() == 3


def test_market_signals_read_no_later_bar(slice_bars: pd.DataFrame) -> None:
    full = market_signals(slice_bars)
    for cutoff in full.index[[30, 400, 1000]]:
        cut = market_signals(slice_bars[slice_bars["date"] <= cutoff])
        pd.testing.assert_frame_equal(cut, full.loc[:cutoff])


def test_the_filter_reads_no_later_bar(sp500_bars: pd.DataFrame, sp500_model: RegimeModel) -> None:
    full = sp500_model.filter(market_signals(sp500_bars))
    for cutoff in full.index[[25, 1500, 3000, 3800, len(full) - 2]]:
        cut = sp500_model.filter(market_signals(sp500_bars[sp500_bars["date"] <= cutoff]))
        pd.testing.assert_frame_equal(cut, full.loc[:cutoff], check_exact=True)


def _hmmlearn_twin(model: RegimeModel) -> GaussianHMM:
    twin = GaussianHMM(n_components=model.n_regimes, covariance_type="full", init_params="", params="")
    twin.n_features = 2
    twin.startprob_, twin.transmat_ = model.start_probabilities, model.transition_matrix
    twin.means_, twin.covars_ = model.means, model.covariances
    return twin


def test_the_filter_is_hmmlearns_forward_pass_not_its_smoother(
    sp500_signals: pd.DataFrame, sp500_model: RegimeModel
) -> None:
    """At the last date of a sequence the smoothed posterior is the filtered one: hmmlearn's ``predict_proba``
    on dates up to t, read at t, checks the filter at t; read earlier it uses later dates and differs."""
    signals = sp500_signals.dropna()
    ours = sp500_model.filter(signals)[sp500_model.columns].to_numpy()
    raw = np.column_stack([signals["market_return"], np.log(signals["market_volatility"])])
    inputs = (raw - sp500_model.input_mean) / sp500_model.input_scale
    twin = _hmmlearn_twin(sp500_model)
    for t in (0, 700, 2500, 3900):
        np.testing.assert_allclose(ours[t], twin.predict_proba(inputs[: t + 1])[-1], atol=1e-9)
    smoothed = twin.predict_proba(inputs)
    assert np.abs(smoothed - ours).max() > 0.1


def test_fit_reads_training_dates_only(sp500_signals: pd.DataFrame, sp500_model: RegimeModel) -> None:
    after = sp500_signals.index > pd.Timestamp(SP500_TRAIN_END)
    scrambled = sp500_signals.copy()
    scrambled.loc[after, "market_return"] *= -3.0
    scrambled.loc[after, "market_volatility"] *= 5.0
    refit = RegimeModel.fit(scrambled, RegimeConfig(), train_end=SP500_TRAIN_END)
    assert refit.to_dict() == sp500_model.to_dict()
    assert sp500_model.train_end <= pd.Timestamp(SP500_TRAIN_END)


def test_same_seed_same_model_and_labels_ordered_by_volatility(
    sp500_signals: pd.DataFrame, sp500_model: RegimeModel
) -> None:
    training = sp500_signals.loc[:SP500_TRAIN_END]
    first = RegimeModel.fit(training, RegimeConfig(seed=3, n_restarts=1))
    again = RegimeModel.fit(training, RegimeConfig(seed=3, n_restarts=1))
    assert first.to_dict() == again.to_dict()
    # Seed 3 alone ends in a poorer local optimum; numbered by volatility, its calm regime is still regime 0.
    assert first.means[0, 1] < first.means[1, 1]
    assert first.log_likelihood < sp500_model.log_likelihood - 1.0
    for seed in (3, 10):
        # The default restarts (seed, seed + 1, ...) keep the best fit: other seeds find the same regimes.
        other = RegimeModel.fit(training, RegimeConfig(seed=seed))
        np.testing.assert_allclose(other.means, sp500_model.means, atol=1e-3)
        np.testing.assert_allclose(other.transition_matrix, sp500_model.transition_matrix, atol=1e-3)


def test_the_calm_regime_has_the_lower_volatility(
    sp500_signals: pd.DataFrame, sp500_model: RegimeModel
) -> None:
    joined = sp500_signals.join(sp500_model.filter(sp500_signals)).dropna()
    volatility = joined.groupby("regime")["market_volatility"].mean()
    assert volatility[0] < 0.6 * volatility[1]
    three = RegimeModel.fit(sp500_signals, RegimeConfig(n_regimes=3), train_end=SP500_TRAIN_END)
    assert np.all(np.diff(three.means[:, 1]) > 0)
    by_regime = sp500_signals.join(three.filter(sp500_signals)).groupby("regime")["market_volatility"].mean()
    assert by_regime.is_monotonic_increasing


def test_crashes_sit_in_the_turbulent_regime(sp500_signals: pd.DataFrame, sp500_model: RegimeModel) -> None:
    """Fitted on 2005-2015: the 2008 crash is in sample, the 2020 COVID crash out of sample."""
    regimes = sp500_model.filter(sp500_signals)["regime"]
    assert (regimes.loc["2008-10"] == 1).mean() == 1.0
    assert (regimes.loc["2020-03-09":"2020-03-31"] == 1).mean() == 1.0
    assert (regimes.loc["2017"] == 0).mean() > 0.9  # the calmest year of the sample


def test_streaming_equals_batch_and_resumes(slice_bars: pd.DataFrame, slice_model: RegimeModel) -> None:
    batch = slice_model.filter(market_signals(slice_bars))[slice_model.columns].to_numpy()
    stream = RegimeStream(RegimeModel.from_dict(json.loads(json.dumps(slice_model.to_dict()))))
    streamed = []
    by_date = list(slice_bars.groupby("date"))
    for index, (_, day) in enumerate(by_date):
        if index == len(by_date) // 2:
            stream = RegimeStream.from_state(json.loads(json.dumps(stream.state())))
        streamed.append(stream.update(dict(zip(day["tic"], day["close"], strict=True))))
    np.testing.assert_array_equal(np.array(streamed), batch)


def test_signal_stream_matches_the_batch_on_a_ragged_panel(dow30_bars: pd.DataFrame) -> None:
    """DOW lists in 2019-03: the batch's and the stream's returns both use tickers trading both days."""
    bars = dow30_bars[dow30_bars["tic"].isin(["DOW", "KO", "JPM"])].assign(
        date=lambda f: pd.to_datetime(f["date"])
    )
    bars = bars[(bars["date"] >= "2019-01-01") & (bars["date"] <= "2019-06-30")]
    batch = market_signals(bars, volatility_window=5)
    stream = MarketSignalStream(volatility_window=5)
    rows = [stream.update(dict(zip(d["tic"], d["close"], strict=True))) for _, d in bars.groupby("date")]
    np.testing.assert_array_equal(np.array(rows), batch.to_numpy())


def test_regime_changes_keep_the_spells_that_held() -> None:
    dates = pd.bdate_range("2021-01-04", periods=14)
    labels = [0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    changes = regime_changes(pd.DataFrame({"regime": labels}, index=dates), min_duration=3)
    assert changes[["from_regime", "to_regime", "duration"]].values.tolist() == [[0, 1, 4], [1, 0, 4]]
    assert list(changes["date"]) == [dates[6], dates[10]]
    assert list(changes["confirmed_on"]) == [dates[8], dates[12]]
    with pytest.raises(ValueError, match="min_duration"):
        regime_changes(pd.DataFrame({"regime": labels}, index=dates), min_duration=0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"n_regimes": 1}, "n_regimes"),
        ({"volatility_window": 1}, "volatility_window"),
        ({"seed": -1}, "seed"),
        ({"n_iter": 0}, "n_iter"),
        ({"covariance_type": "tied"}, "covariance_type"),
        ({"n_restarts": 0}, "n_restarts"),
        ({"min_fit_dates": 5}, "min_fit_dates"),
    ],
)
def test_bad_config_is_refused(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RegimeConfig(**settings)


def test_bad_input_is_refused_before_any_work(sp500_bars: pd.DataFrame, sp500_signals: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="min_fit_dates"):
        RegimeModel.fit(sp500_signals.iloc[:90], RegimeConfig())
    with pytest.raises(ValueError, match="close"):
        market_signals(sp500_bars.drop(columns="close"))
    with pytest.raises(ValueError, match="volatility_window"):
        market_signals(sp500_bars, volatility_window=1)
    with pytest.raises(ValueError, match="market_volatility"):
        RegimeModel.fit(sp500_signals.drop(columns="market_volatility"), RegimeConfig())
    with pytest.raises(ValueError, match="increasing"):
        RegimeModel.fit(sp500_signals.iloc[::-1], RegimeConfig())
    with pytest.raises(ValueError, match="format_version"):
        RegimeModel.from_dict({"format_version": 0})


def test_a_filter_update_without_signal_only_predicts(sp500_model: RegimeModel) -> None:
    running = RegimeFilter(sp500_model)
    np.testing.assert_array_equal(running.update(np.nan, np.nan), sp500_model.start_probabilities)
    seen = running.update(0.03, 0.04)
    assert seen[1] > 0.99  # a 3% day in 4% volatility is the turbulent regime
    np.testing.assert_allclose(running.update(np.nan, np.nan), seen @ sp500_model.transition_matrix)


def test_regime_features_are_date_level_and_causal(
    slice_bars: pd.DataFrame, slice_model: RegimeModel
) -> None:
    def base(bars: pd.DataFrame) -> pd.DataFrame:
        return bars[bars["date"] >= "2015-03-02"][["date", "tic", "close"]].reset_index(drop=True)

    build = regime_feature_builder(base, slice_model)
    full = build(slice_bars)
    assert (full.groupby("date")["p_regime_0"].nunique() == 1).all()
    np.testing.assert_allclose(full["p_regime_0"] + full["p_regime_1"], 1.0)
    for cutoff in pd.DatetimeIndex(full["date"].unique())[[10, 600, 1100]]:
        cut = build(slice_bars[slice_bars["date"] <= cutoff])
        pd.testing.assert_frame_equal(cut, full[full["date"] <= cutoff].reset_index(drop=True))
    regimes = slice_model.filter(market_signals(slice_bars))
    with pytest.raises(ValueError, match="lack"):
        add_regime_features(base(slice_bars), regimes.iloc[:100])
    with pytest.raises(ValueError, match="already hold"):
        add_regime_features(full, regimes)


def test_market_regimes_asset_fits_on_the_training_period(slice_bars: pd.DataFrame) -> None:
    split = make_date_split(slice_bars["date"], train_end="2017-12-29", validation_end="2018-12-31")
    splits = DatasetSplits(split, **apply_split(slice_bars, split))
    output = market_regimes(RegimeSettings(), slice_bars, splits)
    regimes = output.value
    assert isinstance(regimes, MarketRegimes)
    model = regimes.regime_model()
    assert split.train_start <= model.train_start and model.train_end == split.train_end
    expected = fit_market_regimes(slice_bars, split.train_start, split.train_end, RegimeConfig())
    assert regimes.model == expected.model
    pd.testing.assert_frame_equal(regimes.frame, expected.frame)
    for key in ("regime_counts_per_period", "regime_share", "transition_matrix", "regimes_plot"):
        assert key in output.metadata
    assert "| test " in output.metadata["regime_counts_per_period"].value
    assert output.metadata["regimes_plot"].value.startswith("![plot](data:image/png;base64,")
    with pytest.raises(ValueError, match="n_regimes must be at least 2"):
        RegimeSettings(n_regimes=1)


LIVE_TICKERS = ["MSFT", "AAPL", "JPM", "KO"]  # deliberately unsorted, as the live loop may receive them


def _bar_updates(bars: pd.DataFrame):
    fields = ["open", "high", "low", "close", "volume"]
    for date, group in bars.groupby("date", sort=True):
        yield (
            pd.Timestamp(date),
            {tic: tuple(v) for tic, *v in group[["tic", *fields]].itertuples(index=False)},
        )


def test_live_features_filter_the_regimes_the_batch_features_hold(
    slice_bars: pd.DataFrame, slice_model: RegimeModel
) -> None:
    """Replay: a stream warmed up on history, then fed bar by bar and snapshotted halfway through (a restart),
    gives the p_regime columns ``add_regime_features(build_features(bars), filter)`` gives, bit for bit."""
    from trading_core.features.batch import build_features
    from trading_core.features.streaming import StreamingFeatures
    from trading_core.runtime import stored_json

    bars = slice_bars[slice_bars["date"] <= "2016-12-31"]
    batch = add_regime_features(build_features(bars), slice_model.filter(market_signals(bars)))
    dates = np.sort(bars["date"].unique())
    history, rest = bars[bars["date"] < dates[200]], bars[bars["date"] >= dates[200]]
    stream = StreamingFeatures(LIVE_TICKERS, history=history, regime_model=slice_model.to_dict())
    assert stream.columns[-2:] == ("p_regime_0", "p_regime_1")
    emitted = []
    for index, (date, bar_map) in enumerate(_bar_updates(rest)):
        if index == 100:
            document = stored_json.dumps("features", 1, stream.snapshot())
            stream = StreamingFeatures.from_snapshot(stored_json.loads(document, "features", 1, "test"))
        emitted.append(stream.update(date, bar_map))
    streamed = pd.concat(emitted, ignore_index=True)
    expected = batch[batch["date"] >= dates[200]].reset_index(drop=True)
    assert list(streamed.columns) == list(expected.columns)
    np.testing.assert_array_equal(streamed[slice_model.columns], expected[slice_model.columns])
    assert (streamed["p_regime_1"] > 0.5).any() and (streamed["p_regime_0"] > 0.5).any()


def test_the_live_engine_refuses_regime_features_without_their_model() -> None:
    from trading_core.agents.decision_spec import DecisionSpec
    from trading_core.envs.spec import EnvSpec
    from trading_core.live.engine import DecisionEngine, shared_regime_model

    spec = DecisionSpec(("AAPL", "KO"), ("macd", "p_regime_0", "p_regime_1"), EnvSpec())
    with pytest.raises(ValueError, match="holds no regime model"):
        DecisionEngine(None, spec)
    with pytest.raises(ValueError, match="different regime models"):
        shared_regime_model(
            [
                DecisionSpec(("KO",), ("p_regime_0",), EnvSpec(), regime_model={"a": 1}),
                DecisionSpec(("KO",), ("p_regime_0",), EnvSpec(), regime_model={"a": 2}),
            ]
        )


def test_a_decision_spec_stores_its_regime_model(tmp_path, slice_model: RegimeModel) -> None:
    from trading_core.agents.decision_spec import DecisionSpec
    from trading_core.envs.spec import EnvSpec

    spec = DecisionSpec(("KO",), ("p_regime_0", "p_regime_1"), EnvSpec(), regime_model=slice_model.to_dict())
    loaded = DecisionSpec.load(spec.save(tmp_path / "spec"))
    assert loaded.regime_model == slice_model.to_dict()
    assert RegimeModel.from_dict(loaded.regime_model).to_dict() == slice_model.to_dict()


def test_learned_features_asset_adds_the_regime_columns_to_every_split(slice_bars: pd.DataFrame) -> None:
    """The asset on a small real panel: every split gains p_regime_* (date-level), the no-lookahead check
    covers them, the splits carry the regime model to the decision spec; the flag turns them off."""
    import dagster as dg

    from resources.mlflow_registry import RegisteredVersion
    from trading_assets.learning import LearnedFeatureSettings, RegisteredForecaster, learned_features
    from trading_assets.training import decision_spec_for
    from trading_core.envs.spec import EnvSpec
    from trading_core.features.batch import build_features
    from trading_core.models.cnn_lstm import CNNLSTMConfig, train_cnn_lstm
    from trading_core.sectors import sector_map

    bars = slice_bars[slice_bars["date"] <= "2017-12-31"].reset_index(drop=True)
    features = build_features(bars)
    split = make_date_split(features["date"])
    splits = DatasetSplits(split, **apply_split(features, split))
    tiny = CNNLSTMConfig(window=5, conv_channels=4, lstm_hidden=4, embedding_dim=2, max_epochs=1, patience=1)
    forecaster = train_cnn_lstm(splits.train, splits.validation, tiny)
    registered = RegisteredForecaster(forecaster, RegisteredVersion("cnn", "1", "run", "source"))
    regimes = market_regimes(RegimeSettings(), bars, splits).value
    sectors = sector_map(splits.tickers)

    def run(settings: LearnedFeatureSettings) -> tuple[DatasetSplits, dg.AssetCheckResult]:
        outputs = list(
            learned_features(
                dg.build_asset_context(), settings, bars, features, splits, registered, regimes, sectors
            )
        )
        return outputs[0].value, outputs[1]

    with_regimes, check = run(LearnedFeatureSettings())
    assert check.passed
    assert with_regimes.feature_columns[-2:] == ["p_regime_0", "p_regime_1"]
    assert with_regimes.regime_model == regimes.model
    assert with_regimes.sectors == dict(zip(sectors["tic"], sectors["sector"], strict=True))
    for period in ("train", "validation", "test"):
        frame = with_regimes.frame(period)
        assert (frame.groupby("date")["p_regime_1"].nunique() == 1).all()
        expected = regimes.frame.loc[frame["date"], "p_regime_1"].to_numpy()
        np.testing.assert_array_equal(frame["p_regime_1"].to_numpy(), expected)
    spec = decision_spec_for(with_regimes.without_learned(), EnvSpec(), "")
    assert "p_regime_0" in spec.feature_columns and spec.regime_model == regimes.model
    assert spec.sectors == with_regimes.sectors  # without_learned keeps them
    without, _ = run(LearnedFeatureSettings(use_regime_features=False))
    assert not any(c.startswith("p_regime_") for c in without.feature_columns)
    assert without.regime_model is None
