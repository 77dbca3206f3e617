"""Ragged universes: late listings, delistings and missing days mask one ticker, never the others' dates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trading_core.agents.training import PPOConfig, train_ppo
from trading_core.data.coverage import excluded_tickers, universe_coverage
from trading_core.data.leakage import truncate_and_compare
from trading_core.data.schema import feature_columns_of, select_window
from trading_core.data.splits import PERIODS, DatasetSplits, apply_split, make_date_split
from trading_core.data.validation import to_validated_bars
from trading_core.envs.fast import observation_at, observation_from
from trading_core.envs.finrl import TradingEnvConfig, make_stock_trading_env
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.attribution import attribute_pnl
from trading_core.evaluation.backtester import EventDrivenBacktester, buy_and_hold_targets, run_backtest
from trading_core.features.batch import build_features, indicator_warm_up
from trading_core.market.arrays import MarketArrays, period_market
from trading_core.market.costs import CostModel, NoImpact, ProportionalCommission
from trading_core.market.execution import ExecutionConfig
from trading_core.market.simulator import PortfolioSimulator, SimulationConfig

N_DATES = 320
LISTING, LAST_BAR, GAP = 100, 280, 200  # LATE's first bar, GONE's last bar, BBB's missing day (date indices)
WARM_UP = indicator_warm_up() + 1  # bars a ticker needs before its first complete row


def synthetic_bars(seed: int = 0) -> pd.DataFrame:
    """Four random-walk tickers: AAA trades every date, BBB misses one, LATE lists late, GONE delists early."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=N_DATES)
    frames = []
    for tic in ("AAA", "BBB", "GONE", "LATE"):
        close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, N_DATES)))
        open_ = close * (1.0 + rng.normal(0.0, 0.002, N_DATES))
        wick = np.abs(rng.normal(0.0, 0.005, N_DATES)) * close
        frames.append(
            pd.DataFrame(
                {
                    "date": dates,
                    "tic": tic,
                    "open": open_,
                    "high": np.maximum(open_, close) + wick,
                    "low": np.minimum(open_, close) - wick,
                    "close": close,
                    "volume": rng.integers(100_000, 1_000_000, N_DATES).astype(float),
                }
            )
        )
    bars = pd.concat(frames, ignore_index=True)
    missing = (
        ((bars["tic"] == "LATE") & (bars["date"] < dates[LISTING]))
        | ((bars["tic"] == "GONE") & (bars["date"] > dates[LAST_BAR]))
        | ((bars["tic"] == "BBB") & (bars["date"] == dates[GAP]))
    )
    return bars[~missing].reset_index(drop=True)


@pytest.fixture(scope="module")
def synthetic() -> pd.DataFrame:
    return synthetic_bars()


@pytest.fixture(scope="module")
def dates(synthetic) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(np.sort(synthetic["date"].unique()))


@pytest.fixture(scope="module")
def features(synthetic) -> pd.DataFrame:
    return build_features(synthetic)


@pytest.fixture(scope="module")
def market(features) -> MarketArrays:
    return MarketArrays.from_features(features)


def feature_dates(features: pd.DataFrame, tic: str) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(features.loc[features["tic"] == tic, "date"])


# --- features ---------------------------------------------------------------------------------------------


def test_no_date_of_other_tickers_is_dropped(features, dates):
    after_warm_up = dates[WARM_UP - 1 :]
    assert feature_dates(features, "AAA").equals(after_warm_up)
    assert feature_dates(features, "BBB").equals(after_warm_up.drop(dates[GAP]))
    # The late listing only finishes its own warm-up; the delisting only ends its own rows.
    assert feature_dates(features, "LATE").equals(dates[LISTING + WARM_UP - 1 :])
    assert feature_dates(features, "GONE").equals(dates[WARM_UP - 1 : LAST_BAR + 1])
    assert pd.DatetimeIndex(np.sort(features["date"].unique())).equals(after_warm_up)
    assert not features[feature_columns_of(features)].isna().any().any()
    assert (features.groupby("date")["turbulence"].nunique() == 1).all()


@pytest.mark.parametrize(
    "cut",
    [
        LISTING + 5,  # inside LATE's warm-up
        LISTING + WARM_UP - 1,  # LATE's first complete row
        GAP,  # BBB's missing day
        GAP + 1,  # the day after it
        260,  # turbulence running
        LAST_BAR,  # GONE's last bar
        LAST_BAR + 1,  # the day after it
    ],
)
def test_features_are_causal_truncate_and_compare(synthetic, features, dates, cut):
    cutoff = dates[cut]
    truncated = build_features(synthetic[synthetic["date"] <= cutoff])
    pd.testing.assert_frame_equal(truncated, features[features["date"] <= cutoff].reset_index(drop=True))
    assert truncate_and_compare(synthetic, build_features, [cutoff]) == []


def test_a_ticker_too_short_for_the_warm_up_is_excluded_and_reported(synthetic, dates):
    short = synthetic[synthetic["tic"] == "AAA"].tail(10).assign(tic="NEW")
    bars = pd.concat([synthetic, short], ignore_index=True)
    built = build_features(bars)
    assert "NEW" not in set(built["tic"])
    pd.testing.assert_frame_equal(built, build_features(synthetic))  # nobody else loses a row

    coverage = universe_coverage(bars, built, indicator_warm_up()).set_index("tic")
    assert coverage.loc["AAA", "status"] == "full" and coverage.loc["AAA", "missing_bars"] == 0
    assert coverage.loc["BBB", "status"] == "full" and coverage.loc["BBB", "missing_bars"] == 1
    assert coverage.loc["LATE", "status"] == "late listing"
    assert coverage.loc["LATE", "first_date"] == dates[LISTING]
    assert coverage.loc["GONE", "status"] == "delisted"
    assert coverage.loc["GONE", "last_date"] == dates[LAST_BAR]
    assert coverage.loc["NEW", "status"] == "late listing" and coverage.loc["NEW", "bars"] == 10
    assert excluded_tickers(coverage.reset_index()) == {
        "NEW": f"10 bars, fewer than the {WARM_UP} the indicator warm-up needs"
    }


def test_the_run_summary_and_the_asset_metadata_list_coverage_and_exclusions(synthetic, features, dates):
    from pipelines.run_pipeline import RunOutputs, _data_lines
    from trading_assets.features import coverage_metadata

    bars = pd.concat([synthetic, synthetic[synthetic["tic"] == "AAA"].tail(10).assign(tic="NEW")])
    lines = _data_lines(RunOutputs(validated_daily_bars=bars, features=features))
    first, last = dates[0].date(), dates[-1].date()
    assert f"Coverage    : AAA {first}..{last} (full)" in lines
    assert f"              BBB {first}..{last} (full, 1 missing bar)" in lines
    assert f"              GONE {first}..{dates[LAST_BAR].date()} (delisted)" in lines
    assert f"              LATE {dates[LISTING].date()}..{last} (late listing)" in lines
    assert f"Excluded    : NEW: 10 bars, fewer than the {WARM_UP} the indicator warm-up needs" in lines
    metadata = coverage_metadata(bars, features)
    assert "| LATE  |" in metadata["universe_coverage"].value
    assert metadata["excluded_tickers"].value.startswith("- NEW: 10 bars")


# --- arrays -----------------------------------------------------------------------------------------------


def test_arrays_cover_the_full_grid_and_mask_cells_without_a_bar(features, market, dates):
    late, gone, gap = (market.tickers.index(t) for t in ("LATE", "GONE", "BBB"))
    day = market.dates.get_loc
    listed = day(dates[LISTING + WARM_UP - 1])
    assert market.n_steps == features["date"].nunique() and not market.all_tradable
    assert market.tradable.sum() == len(features)
    assert not market.tradable[:listed, late].any() and market.tradable[listed:, late].all()
    assert market.tradable[: day(dates[LAST_BAR]) + 1, gone].all()
    assert not market.tradable[day(dates[LAST_BAR]) + 1 :, gone].any()
    assert not market.tradable[day(dates[GAP]), gap]

    # Before a listing: its first close; after a delisting and on a missing day: the last close, flat.
    np.testing.assert_array_equal(market.close[:listed, late], market.close[listed, late])
    np.testing.assert_array_equal(
        market.close[day(dates[LAST_BAR]) :, gone], market.close[day(dates[LAST_BAR]), gone]
    )
    on_gap = day(dates[GAP])
    assert market.close[on_gap, gap] == market.close[on_gap - 1, gap]
    for field in ("open", "high", "low"):
        assert getattr(market, field)[on_gap, gap] == market.close[on_gap - 1, gap]
    assert market.volume[on_gap, gap] == 0.0 and not market.volume[:listed, late].any()
    assert not np.where(market.tradable[:, None, :], 0.0, market.features).any()
    assert np.isfinite(market.close).all() and np.isfinite(market.features).all()


def test_to_frame_emits_only_tradable_rows_and_between_keeps_the_mask(features, market, dates):
    rebuilt = market.to_frame()
    pd.testing.assert_frame_equal(rebuilt, features[rebuilt.columns.tolist()], check_dtype=False)
    window = market.between(dates[GAP - 5], dates[GAP + 5])
    np.testing.assert_array_equal(
        window.tradable,
        market.tradable[market.dates.get_loc(dates[GAP - 5]) : market.dates.get_loc(dates[GAP + 5]) + 1],
    )


def test_a_universe_keeps_tickers_without_rows_as_never_tradable(features):
    early = features[features["date"] < features.loc[features["tic"] == "LATE", "date"].min()]
    market = MarketArrays.from_features(early, tickers=("AAA", "BBB", "GONE", "LATE"))
    assert market.tickers == ("AAA", "BBB", "GONE", "LATE")
    assert not market.tradable[:, 3].any() and (market.close[:, 3] == 1.0).all()


def test_a_rectangular_panel_needs_no_mask(features):
    full = features[features["tic"] == "AAA"]
    market = MarketArrays.from_features(full)
    assert market.all_tradable and market.observed_close is market.close
    assert market.observed_features is market.features


# --- simulator --------------------------------------------------------------------------------------------


def plain_config(fill_timing: str) -> SimulationConfig:
    return SimulationConfig(
        cost_model=CostModel(ProportionalCommission(0.001), NoImpact()),
        spread="none",
        execution=ExecutionConfig(fill_timing=fill_timing, participation_cap=None),
        risk=None,
    )


def always_buying(day: int, simulator: PortfolioSimulator) -> np.ndarray:
    """Ten more shares of every asset at every close (so every tradable asset has an order every day)."""
    return simulator.holdings + 10.0


def run_always_buying(market: MarketArrays, config: SimulationConfig):
    """Step a simulator to the end; per step: outcome, cash and holdings before and after (portfolio 0)."""
    simulator = PortfolioSimulator(market, config)
    simulator.reset()
    steps, done = [], False
    while not done:
        before = (simulator.cash[0], simulator.holdings[0].copy())
        outcome = simulator.step(always_buying(simulator.day, simulator))
        steps.append((outcome, *before, simulator.cash[0], simulator.holdings[0].copy()))
        done = outcome.done
    return steps


@pytest.mark.parametrize(
    "config",
    [plain_config("next_open"), plain_config("same_close"), SimulationConfig()],
    ids=["next_open", "same_close", "default_costs_and_risk"],
)
def test_masked_assets_never_trade_and_a_delisting_settles_into_cash(market, dates, config):
    steps = run_always_buying(market, config)
    late, gone, gap = (market.tickers.index(t) for t in ("LATE", "GONE", "BBB"))
    holdings = np.stack([steps[0][2], *(after for *_, after in steps)])  # [T, N], by date
    traded = np.zeros_like(market.close)
    for outcome, *_ in steps:
        traded[outcome.fill_day] += outcome.fills.shares[0]

    assert not traded[~market.tradable].any()  # no fill on a cell without a bar
    assert traded[market.tradable[:, late], late].any()  # the late ticker trades once listed
    assert not holdings[~market.tradable[:, late], late].any()
    assert traded[market.dates.get_loc(dates[GAP]), gap] == 0.0

    settled_on = market.dates.get_loc(dates[LAST_BAR]) + 1
    assert holdings[settled_on - 1, gone] > 0 and not holdings[settled_on:, gone].any()
    outcome, cash_before, held_before, cash_after, _ = steps[settled_on - 1]
    assert outcome.day + 1 == settled_on
    settled = outcome.settled[0, gone]
    assert settled == held_before[gone] + outcome.fills.shares[0, gone]
    last_close = market.close[settled_on - 1, gone]
    # Cash at the last close, no costs.
    assert cash_after == pytest.approx(
        cash_before + outcome.fills.cash_change[0] + settled * last_close, abs=1e-6
    )
    assert all(step[0].settled is None for index, step in enumerate(steps) if index != settled_on - 1)


def test_orders_on_a_missing_day_are_held_before_the_risk_review(market, dates):
    simulator = PortfolioSimulator(market, plain_config("next_open"))
    simulator.reset()
    gap_day, gap = market.dates.get_loc(dates[GAP]), market.tickers.index("BBB")
    while simulator.day < gap_day:
        simulator.step(always_buying(simulator.day, simulator))
    wanted = always_buying(simulator.day, simulator)
    assert (simulator.hold_untradable(wanted)[:, gap] == simulator.holdings[:, gap]).all()
    orders, _ = simulator.submit(wanted)
    assert orders.shares[0, gap] == 0.0 and (orders.shares[0, market.tradable[gap_day]] > 0).all()


@pytest.mark.parametrize("cut", [LISTING + 3, LISTING + WARM_UP + 3, GAP, LAST_BAR + 1])
def test_observations_and_equity_up_to_a_date_need_no_later_bar(features, market, dates, cut):
    cutoff = dates[cut]
    truncated = MarketArrays.from_features(features[features["date"] <= cutoff], tickers=market.tickers)
    config = plain_config("next_open")
    full_run = EventDrivenBacktester(market, config).run_targets(always_buying)
    cut_run = EventDrivenBacktester(truncated, config).run_targets(always_buying)
    pd.testing.assert_series_equal(cut_run.equity, full_run.equity[: len(cut_run.equity)])
    for day in range(truncated.n_steps):
        cash, holdings = np.array([1000.0]), cut_run.positions.iloc[day].to_numpy()[None, :]
        np.testing.assert_array_equal(
            observation_at(truncated, day, cash, holdings), observation_at(market, day, cash, holdings)
        )


# --- observation, benchmark, FinRL engine -----------------------------------------------------------------


def test_observation_shows_zeros_for_assets_without_a_bar(market, dates):
    n = market.n_assets
    holdings = np.arange(1.0, n + 1.0)[None, :]
    for day in (0, market.dates.get_loc(dates[GAP]), market.n_steps - 1):
        observation = observation_at(market, day, np.array([1000.0]), holdings)[0]
        closes, held = observation[1 : 1 + n], observation[1 + n : 1 + 2 * n]
        features = observation[1 + 2 * n :].reshape(len(market.feature_names), n)
        mask = market.tradable[day]
        assert not closes[~mask].any() and (closes[mask] > 0).all()
        assert not features[:, ~mask].any()
        np.testing.assert_array_equal(held, holdings[0])  # a halted position is still held
        raw = observation_from(
            np.array([1000.0]), market.close[day], holdings, market.features[day], tradable=mask
        )
        np.testing.assert_array_equal(raw[0], observation)


def test_buy_and_hold_buys_only_what_trades_at_the_first_close(market):
    record = EventDrivenBacktester(market, plain_config("next_open")).run_targets(buy_and_hold_targets())
    first = record.positions.iloc[1]
    assert first["LATE"] == 0.0 and (first[["AAA", "BBB", "GONE"]] > 0).all()
    assert (record.positions["LATE"] == 0.0).all()
    assert record.positions["GONE"].iloc[-1] == 0.0  # delisted into cash
    weights = first[["AAA", "BBB", "GONE"]] * market.close[1, :3] / record.equity.iloc[1]
    np.testing.assert_allclose(weights, 0.99 / 3, rtol=0.02)


def test_finrl_engine_names_the_tickers_a_ragged_panel_lacks(features):
    with pytest.raises(ValueError, match=r"missing: BBB \(1 dates\), GONE .*LATE"):
        make_stock_trading_env(features, TradingEnvConfig())


# --- real data --------------------------------------------------------------------------------------------


def test_dow_listing_in_2019_keeps_every_earlier_date_of_the_other_tickers(dow30_bars):
    bars = to_validated_bars(select_window(dow30_bars, None, "2017-06-01", "2020-06-30"))
    built = build_features(bars)
    listing = pd.Timestamp("2019-03-20")
    assert bars.loc[bars["tic"] == "DOW", "date"].min() == listing
    dow = built[built["tic"] == "DOW"]
    assert dow["date"].min() == np.sort(bars.loc[bars["tic"] == "DOW", "date"].unique())[WARM_UP - 1]

    split = make_date_split(built["date"], train_end="2019-06-28", validation_end="2019-12-31")
    train = apply_split(built, split)["train"]
    before = train[train["date"] < listing]
    others = sorted(set(bars["tic"]) - {"DOW"})
    assert len(others) == 30 and sorted(before["tic"].unique()) == others
    calendar = np.sort(bars["date"].unique())
    expected = calendar[(calendar >= calendar[WARM_UP - 1]) & (calendar < listing)]
    assert (before.groupby("tic")["date"].nunique() == len(expected)).all()

    market = MarketArrays.from_features(train)
    column = market.tickers.index("DOW")
    assert not market.tradable[market.dates < listing, column].any()
    assert market.tradable[:, [i for i in range(market.n_assets) if i != column]].all()


# --- one universe for every split -------------------------------------------------------------------------

TRAIN_END = LISTING + WARM_UP - 2  # the last date before LATE's first feature row: LATE lists after training
VALIDATION_END = LAST_BAR  # GONE's last bar: GONE delists before the test


@pytest.fixture(scope="module")
def synthetic_splits(features, dates) -> DatasetSplits:
    """The synthetic panel split so that LATE lists after training and GONE delists before the test."""
    split = make_date_split(
        features["date"],
        train_end=str(dates[TRAIN_END].date()),
        validation_end=str(dates[VALIDATION_END].date()),
    )
    return DatasetSplits(split, **apply_split(features, split))


def test_every_split_trades_the_full_universe(synthetic_splits):
    splits = synthetic_splits
    assert "LATE" not in set(splits.train["tic"]) and "GONE" not in set(splits.test["tic"])
    assert splits.tickers == ["AAA", "BBB", "GONE", "LATE"]
    markets = {period: period_market(splits, period) for period in (*PERIODS, "full")}
    for market in markets.values():
        assert market.tickers == ("AAA", "BBB", "GONE", "LATE")
        assert market.feature_names == markets["full"].feature_names
    late, gone = (markets["full"].tickers.index(t) for t in ("LATE", "GONE"))
    assert not markets["train"].tradable[:, late].any() and markets["train"].tradable[:, gone].all()
    assert not markets["test"].tradable[:, gone].any() and markets["test"].tradable[:, late].all()
    assert markets["validation"].tradable[:, late].all() and markets["validation"].tradable[:, gone].all()
    # Each period is converted from its own rows: LATE's training cells are not priced from later closes.
    assert (markets["train"].close[:, late] == 1.0).all()
    for period in PERIODS:
        assert markets[period].dates.equals(pd.DatetimeIndex(np.sort(splits.frame(period)["date"].unique())))


def test_a_policy_trained_on_train_backtests_on_validation_and_test(synthetic_splits):
    splits, spec = synthetic_splits, EnvSpec()
    policy = train_ppo(
        period_market(splits, "train"),
        spec,
        PPOConfig(total_timesteps=256, n_steps=128, batch_size=64),
        seed=1,
    )
    for period in ("validation", "test"):
        market = period_market(splits, period)
        result = run_backtest(policy, market, spec)
        assert len(result.equity) == market.n_steps and np.isfinite(result.equity).all()
        assert list(result.record.positions.columns) == splits.tickers


def test_walk_forward_periods_and_the_registered_spec_use_the_universe(synthetic_splits):
    from trading_assets.training import _walk_forward_periods, decision_spec_for, observation_example

    splits, spec = synthetic_splits, EnvSpec()
    periods = _walk_forward_periods(splits.full, n_windows=2, test_dates=40, validation_dates=30)
    assert {part.tickers for window in periods.values() for part in window} == {tuple(splits.tickers)}
    assert decision_spec_for(splits, spec, "").tickers == tuple(splits.tickers)
    n, n_features = len(splits.tickers), len(period_market(splits, "test").feature_names)
    assert observation_example(splits, spec).shape == (1, 1 + 2 * n + n_features * n)


def test_dow_listing_in_validation_keeps_one_universe_for_every_split(dow30_bars):
    bars = to_validated_bars(select_window(dow30_bars, None, "2016-06-01", "2020-06-30"))
    built = build_features(bars)
    split = make_date_split(built["date"], train_end="2017-12-29", validation_end="2019-12-31")
    splits = DatasetSplits(split, **apply_split(built, split))
    assert "DOW" not in set(splits.train["tic"]) and len(splits.tickers) == 31

    listing = pd.Timestamp("2019-03-20")
    # DOW's first complete feature row: its WARM_UP-th bar after listing (the indicators' warm-up).
    first_row = np.sort(bars.loc[bars["tic"] == "DOW", "date"].unique())[WARM_UP - 1]
    markets = {period: period_market(splits, period) for period in PERIODS}
    for market in markets.values():
        assert market.tickers == tuple(splits.tickers)
    column = splits.tickers.index("DOW")
    assert not markets["train"].tradable[:, column].any()
    others = [i for i in range(len(splits.tickers)) if i != column]
    assert markets["train"].tradable[:, others].all()
    validation = markets["validation"]
    assert not validation.tradable[validation.dates < listing, column].any()
    assert not validation.tradable[validation.dates < first_row, column].any()
    assert validation.tradable[validation.dates >= first_row, column].all()
    assert markets["test"].tradable[:, column].all()


# --- delisting settlements in the backtest record ----------------------------------------------------------


@pytest.mark.parametrize(
    "config", [plain_config("next_open"), SimulationConfig()], ids=["next_open", "default_costs_and_risk"]
)
def test_a_delisting_settlement_is_a_trade_and_the_attribution_reconciles(market, dates, config):
    record = EventDrivenBacktester(market, config).run_targets(always_buying)
    settled_on = dates[LAST_BAR + 1]
    held = record.positions.loc[dates[LAST_BAR], "GONE"]
    assert held > 0 and record.positions.loc[settled_on, "GONE"] == 0.0
    trades = record.trades
    settlement = trades[(trades["tic"] == "GONE") & (trades["date"] == settled_on)]
    assert len(settlement) == 1
    row = settlement.iloc[0]
    gone = market.tickers.index("GONE")
    assert row["shares"] == -held and row["price"] == market.close[market.dates.get_loc(settled_on), gone]
    assert row["notional"] == pytest.approx(held * row["price"])
    assert row[["commission", "spread_cost", "impact_cost"]].eq(0.0).all()
    # Every ticker's trades add up to its final position.
    net_shares = trades.groupby("tic")["shares"].sum().reindex(record.positions.columns, fill_value=0.0)
    np.testing.assert_allclose(net_shares, record.positions.iloc[-1], atol=1e-9)

    table = attribute_pnl(record, market)  # the arrays' carried closes: no NaN after the delisting
    assert np.isfinite(table.to_numpy()).all()
    change = record.equity.iloc[-1] - record.equity.iloc[0]
    assert table["net_pnl"].sum() == pytest.approx(change, rel=1e-9)
    gone_trades = trades[trades["tic"] == "GONE"]
    assert table.loc["GONE", "net_pnl"] == pytest.approx(
        -(gone_trades["shares"] * gone_trades["price"]).sum() - gone_trades["commission"].sum()
    )
