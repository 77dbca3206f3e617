"""The risk manager's sector-exposure limit from the pipeline to paper trading: the splits carry each ticker's
sector into every market built from them, the decision spec stores them, the live engine and the backtester
apply ``max_sector_exposure`` with them, and the training settings expose the limit."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from trading_assets.training import TrainingSettings, decision_spec_for
from trading_core.agents.decision_spec import DecisionSpec
from trading_core.allocators.config import PRIOR_FEATURE, AllocatorConfig
from trading_core.allocators.prior import history_needed, prior_weights
from trading_core.data.splits import PERIODS, DatasetSplits, apply_split, make_date_split
from trading_core.envs.fast import ActionSpec
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtester import run_backtests
from trading_core.evaluation.stress import run_stress_tests
from trading_core.features.batch import build_features
from trading_core.live.engine import DecisionEngine, PortfolioBook
from trading_core.market.arrays import period_market
from trading_core.market.limits import RiskLimits
from trading_core.market.simulator import SimulationConfig
from trading_core.sectors import UNKNOWN_SECTOR, sector_map

IT = "Information Technology"
SECTOR_CAP = 0.3
# slice_bars' tickers in column order: AAPL and MSFT are both Information Technology.
IT_TICKERS = ["AAPL", "MSFT"]


class ConcentratedPolicy:
    """Always the weights action that puts nearly everything in AAPL and MSFT (one sector), for one
    observation or a batch."""

    def __init__(self, tickers: tuple[str, ...]) -> None:
        logits = [1.0 if tic in IT_TICKERS else -1.0 for tic in tickers]
        self.action = np.array([*logits, -1.0], dtype=np.float32)  # the last entry is cash

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        if np.ndim(observation) == 1:
            return self.action, state
        return np.tile(self.action, (len(observation), 1)), state


@pytest.fixture(scope="module")
def features(slice_bars: pd.DataFrame) -> pd.DataFrame:
    return build_features(slice_bars)


@pytest.fixture(scope="module")
def labels(features: pd.DataFrame) -> dict[str, str]:
    frame = sector_map(sorted(features["tic"].unique()))
    return dict(zip(frame["tic"], frame["sector"], strict=True))


@pytest.fixture(scope="module")
def splits(features: pd.DataFrame, labels: dict[str, str]) -> DatasetSplits:
    split = make_date_split(features["date"])
    return DatasetSplits(split, **apply_split(features, split), sectors=labels)


def sector_limited(cap: float | None = SECTOR_CAP) -> EnvSpec:
    return EnvSpec(simulation=SimulationConfig(risk=RiskLimits(max_sector_exposure=cap)))


def test_the_universe_has_two_technology_tickers(labels):
    assert [tic for tic, sector in labels.items() if sector == IT] == IT_TICKERS


# --- splits -> markets ------------------------------------------------------------------------------------


def test_period_market_carries_the_splits_sectors_in_column_order(splits, labels):
    for period in (*PERIODS, "full"):
        market = period_market(splits, period)
        assert market.sectors == tuple(labels[tic] for tic in market.tickers)
    test = period_market(splits, "test")
    assert test.between(test.dates[3], test.dates[10]).sectors == test.sectors
    assert period_market(splits.without_learned(), "train").sectors == test.sectors


def test_a_ticker_without_a_label_is_unknown_and_splits_without_sectors_give_none(splits, labels):
    partial = replace(splits, sectors={tic: s for tic, s in labels.items() if tic != "KO"})
    market = period_market(partial, "validation")
    assert market.sectors[market.tickers.index("KO")] == UNKNOWN_SECTOR
    assert partial.sector_labels() == {**labels, "KO": UNKNOWN_SECTOR}
    assert period_market(replace(splits, sectors=None), "test").sectors is None
    assert replace(splits, sectors=None).sector_labels() is None


def test_bad_sector_labels_are_refused_when_the_splits_are_built(splits):
    with pytest.raises(ValueError, match="non-empty label"):
        replace(splits, sectors={"AAPL": " "})


# --- the decision spec -------------------------------------------------------------------------------------


def test_decision_spec_for_stores_the_sectors_of_the_spec_tickers(splits, labels):
    wider = replace(splits, sectors={**labels, "NOT_TRADED": "Energy"})
    spec = decision_spec_for(wider, sector_limited(), "")
    assert spec.sectors == labels
    assert spec.sector_labels == tuple(labels[tic] for tic in spec.tickers)


def test_decision_spec_round_trips_its_sectors_through_json(splits, tmp_path):
    spec = decision_spec_for(splits, sector_limited(), "")
    path = spec.save(tmp_path / "spec")
    assert json.loads(path.read_text())["data"]["fields"]["sectors"] == spec.sectors  # plain JSON
    loaded = DecisionSpec.load(path)
    assert loaded == spec and loaded.sectors == spec.sectors


def test_a_spec_stored_before_sectors_existed_loads_without_them(splits, tmp_path):
    path = decision_spec_for(splits, EnvSpec(), "").save(tmp_path / "spec")
    document = json.loads(path.read_text())
    del document["data"]["fields"]["sectors"]
    path.write_text(json.dumps(document))
    assert DecisionSpec.load(path).sectors is None


def test_a_spec_whose_sectors_miss_a_ticker_is_refused(splits, labels):
    spec = decision_spec_for(splits, EnvSpec(), "")
    with pytest.raises(ValueError, match=r"unlabelled \['KO'\]"):
        replace(spec, sectors={tic: s for tic, s in labels.items() if tic != "KO"})


# --- the live engine ---------------------------------------------------------------------------------------


def _decide(engine: DecisionEngine, splits: DatasetSplits, day: int = 5):
    market = period_market(splits, "test")
    rows = splits.test[splits.test["date"] == market.dates[day]].sort_values("tic")
    columns = tuple(engine.spec.observation_columns[2:])
    values = rows[list(columns)].to_numpy(dtype=np.float64)
    book = PortfolioBook(cash=100_000.0, holdings=np.zeros(len(engine.spec.tickers)))
    engine.reset(book.cash)
    return engine.decide(market.dates[day], values, columns, book), values[:, columns.index("close")]


def test_the_live_engine_applies_the_sector_limit_with_the_spec_sectors(splits, labels):
    # Stored in another order than the tickers: the engine reads them in the spec's ticker order.
    spec = replace(decision_spec_for(splits, sector_limited(), ""), sectors=dict(reversed(labels.items())))
    engine = DecisionEngine(ConcentratedPolicy(spec.tickers), spec)
    assert engine.risk.sectors == tuple(labels[tic] for tic in spec.tickers)
    decision, prices = _decide(engine, splits)
    rules = {(i.rule, spec.tickers[i.asset]) for i in decision.review.interventions(0) if i.asset is not None}
    assert {("sector_exposure", "AAPL"), ("sector_exposure", "MSFT")} <= rules
    technology = [spec.tickers.index(tic) for tic in IT_TICKERS]
    requested = float(decision.targets[technology] @ prices[technology]) / 100_000.0
    approved = float(decision.approved[technology] @ prices[technology]) / 100_000.0
    assert requested > 0.4 and approved == pytest.approx(SECTOR_CAP, rel=1e-9)

    unlimited = DecisionEngine(ConcentratedPolicy(spec.tickers), replace(spec, env_spec=sector_limited(None)))
    decision, _ = _decide(unlimited, splits)
    assert not any(i.rule == "sector_exposure" for i in decision.review.interventions(0))


def test_a_sector_limited_spec_without_sectors_is_refused_by_the_engine(splits):
    older = replace(decision_spec_for(splits, sector_limited(), ""), sectors=None)
    with pytest.raises(ValueError, match="max_sector_exposure but its decision spec holds no sectors"):
        DecisionEngine(ConcentratedPolicy(older.tickers), older)
    DecisionEngine(ConcentratedPolicy(older.tickers), replace(older, env_spec=EnvSpec()))  # no limit: fine


def test_the_live_prior_reads_the_spec_sectors_as_training_did(splits):
    # sector_momentum rotates between sectors: the live fit must see the labels the training column saw.
    # A cap of 50% lets one sector of two assets invest fully, so the rotation is more than plain momentum.
    prior = AllocatorConfig(
        method="sector_momentum",
        lookback=42,
        min_history=21,
        max_weight=0.5,
        momentum_lookback=40,
        momentum_skip=5,
        sector_top=1,
    )
    env_spec = EnvSpec(action=ActionSpec(mode="tilt", prior=prior))
    spec = decision_spec_for(splits, env_spec, "")
    engine = DecisionEngine(ConcentratedPolicy(spec.tickers), spec)
    full = period_market(splits, "full")
    batch = prior_weights(full, prior)
    unlabelled = prior_weights(replace(full, sectors=None), prior)
    frame = splits.full
    differs = 0
    for day in range(history_needed(prior) + 10, full.n_steps, 97):
        recent = frame[frame["date"].isin(full.dates[day - engine.history_dates + 1 : day + 1])]
        live = engine.prior_weights(recent).to_numpy()
        np.testing.assert_allclose(live, batch[day], atol=1e-12)
        differs += not np.allclose(live, unlabelled[day])
    assert differs > 0, "sector labels never changed the prior: the check proves nothing"
    assert PRIOR_FEATURE in spec.feature_columns


# --- the backtester ----------------------------------------------------------------------------------------


def _sector_exposure(positions: pd.DataFrame, close: np.ndarray, equity: pd.Series) -> pd.Series:
    values = positions[IT_TICKERS].to_numpy() * close[:, [positions.columns.get_loc(t) for t in IT_TICKERS]]
    return pd.Series(values.sum(axis=1), index=positions.index) / equity


def test_a_backtest_on_splits_never_holds_more_than_the_sector_cap(splits):
    market = period_market(splits, "test")
    policy = ConcentratedPolicy(market.tickers)
    (limited,) = run_backtests([policy], market, sector_limited())
    (unlimited,) = run_backtests([policy], market, sector_limited(None))
    held = _sector_exposure(limited.record.positions, market.close, limited.record.equity)
    # Without the limit the policy holds about half its equity in technology (max_weight 25% each).
    assert _sector_exposure(unlimited.record.positions, market.close, unlimited.record.equity).median() > 0.45
    assert set(limited.record.interventions["rule"]) >= {"sector_exposure"}
    # At every close: the cap, plus a day's price drift between the decision's close and the next.
    assert held.max() <= SECTOR_CAP + 0.01
    # At the close each decision was taken at, what the next fill left held: the cap, but for the share the
    # whole-share orders keep when a trim is smaller than one share (one share of each asset of the sector).
    after_fill = _sector_exposure(
        limited.record.positions.iloc[1:].set_axis(market.dates[:-1]),
        market.close[:-1],
        limited.record.equity[:-1],
    )
    one_share = market.close[:-1, [market.tickers.index(t) for t in IT_TICKERS]].sum(axis=1)
    slack = one_share / limited.record.equity[:-1].to_numpy()
    assert (after_fill.to_numpy() <= SECTOR_CAP + slack + 1e-9).all()
    assert after_fill.max() > SECTOR_CAP - 0.01  # the cap binds: the policy wants more


def test_stress_scenarios_rebuilt_from_shocked_bars_keep_the_sectors(splits, slice_bars):
    market = period_market(splits, "full")
    split = splits.split
    results = run_stress_tests(
        ConcentratedPolicy(market.tickers),
        slice_bars,
        market,
        split.test_start,
        split.test_end,
        sector_limited(),
    )
    synthetic = {r.name: r for r in results if r.kind == "synthetic"}
    # Each shocked market is rebuilt from bars: without the labels its sector limit could not be built at all.
    assert {"gap_down_10pct", "volatility_x3", "correlations_to_1", "liquidity_drop"} <= set(synthetic)
    assert all(r.interventions > 0 for r in synthetic.values())


def test_a_backtest_of_a_features_frame_applies_the_spec_sectors(splits):
    # What champion monitoring backtests: frames cut outside the splits, turned into arrays by the spec.
    spec = decision_spec_for(splits, sector_limited(), "")
    frame = splits.test
    market = spec.market_of(frame)
    assert market.tickers == spec.tickers and market.sectors == spec.sector_labels
    assert market.feature_names == spec.feature_columns
    (result,) = run_backtests([ConcentratedPolicy(spec.tickers)], market, spec.env_spec)
    assert "sector_exposure" in set(result.record.interventions["rule"])
    with pytest.raises(ValueError, match="carries no sector labels"):  # the bare frame has none
        run_backtests([ConcentratedPolicy(spec.tickers)], frame, spec.env_spec)
    with pytest.raises(ValueError, match="lack columns the agent observes"):
        spec.market_of(frame.drop(columns=["macd"]))


# --- the training settings -----------------------------------------------------------------------------------


def test_the_training_setting_reaches_the_risk_limits():
    assert TrainingSettings().max_sector_exposure == RiskLimits().max_sector_exposure
    assert TrainingSettings(max_sector_exposure=0.35).env_spec().simulation.risk.max_sector_exposure == 0.35
    with pytest.raises(ValueError, match="max_sector_exposure"):
        TrainingSettings(max_sector_exposure=-0.1).to_domain()
