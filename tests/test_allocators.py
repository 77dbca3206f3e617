"""Classical allocators on real Dow-30 bars: every method keeps to the weight limits, never looks ahead, is
reproducible, trades only on its rebalance dates, and survives a failing optimiser; the equal-weight backtest
matches a hand computation; sector momentum holds the best sectors by hand, and degrades to plain momentum
(saying so) with fewer than two sectors or none."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd
import pytest
from skfolio.moments import LedoitWolf

from trading_core.allocators import methods
from trading_core.allocators.config import ALLOCATORS, AllocatorConfig
from trading_core.allocators.methods import cap_weights, fit_weights, momentum_weights
from trading_core.allocators.prior import prior_weights
from trading_core.allocators.schedule import (
    allocation_at,
    allocation_schedule,
    is_rebalance_day,
    weight_schedule,
    weights_at,
)
from trading_core.data.schema import select_window
from trading_core.data.validation import to_validated_bars
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.allocator_backtests import (
    allocator_targets,
    backtest_allocator,
    backtest_allocators,
    simulation_of,
)
from trading_core.evaluation.backtester import EventDrivenBacktester
from trading_core.market.arrays import MarketArrays
from trading_core.market.costs import CostModel, NoImpact, ProportionalCommission
from trading_core.market.execution import ExecutionConfig
from trading_core.market.limits import RiskLimits
from trading_core.market.simulator import SimulationConfig
from trading_core.market.sizing import inverse_volatility_weights, risk_parity_weights
from trading_core.sectors import sector_map, with_sectors

TICKERS = ["AAPL", "AXP", "BA", "CAT", "CVX", "JNJ", "JPM", "KO", "MSFT", "WMT"]
# Half-year windows so a two-year slice sees many fits of every method, momentum included.
CONFIG = AllocatorConfig(lookback=126, min_history=42, momentum_lookback=126, momentum_skip=10)
# Proportional commission, no spread, impact, volume cap or risk manager: simple enough to compute by hand.
PLAIN = SimulationConfig(
    cost_model=CostModel(ProportionalCommission(0.001), NoImpact()),
    spread="none",
    execution=ExecutionConfig(participation_cap=None),
    risk=None,
)


@pytest.fixture(scope="module")
def unlabelled(dow30_bars) -> MarketArrays:
    bars = to_validated_bars(select_window(dow30_bars, TICKERS, "2016-01-01", "2017-12-31"))
    return MarketArrays.from_features(bars, feature_names=[])


@pytest.fixture(scope="module")
def market(unlabelled) -> MarketArrays:
    """The panel with its tickers' sectors (6 of them: pytickersymbols' classification)."""
    return with_sectors(unlabelled, sector_map(unlabelled.tickers))


@dataclass(frozen=True)
class TradableMarket(MarketArrays):
    """A panel with a tradable mask (the field ``MarketArrays`` may grow itself)."""

    tradable: np.ndarray | None = None


def with_tradable(market: MarketArrays, tradable: np.ndarray) -> MarketArrays:
    if "tradable" in {f.name for f in fields(MarketArrays)}:
        return replace(market, tradable=tradable)
    values = {f.name: getattr(market, f.name) for f in fields(market)}
    values["tradable"] = tradable
    return TradableMarket(**values)


def config_of(method: str, **changes) -> AllocatorConfig:
    return replace(CONFIG, method=method, **changes)


def test_the_defaults_are_the_risk_managers():
    assert AllocatorConfig().max_weight == RiskLimits().max_weight
    assert ALLOCATORS[0] == "equal_weight" and len(set(ALLOCATORS)) == len(ALLOCATORS) == 8
    assert ALLOCATORS[-1] == "sector_momentum"
    with pytest.raises(ValueError, match="method"):
        AllocatorConfig(method="magic")
    with pytest.raises(ValueError, match="min_history"):
        AllocatorConfig(lookback=20, min_history=30)
    # The agents' own simulation: costs and the risk manager of the fast engine, FinRL's costs for its engine.
    assert simulation_of(EnvSpec()) == EnvSpec().simulation
    assert simulation_of(EnvSpec(engine="finrl")).risk is None


@pytest.mark.parametrize("method", ALLOCATORS)
def test_every_method_keeps_to_the_limits_and_skips_untradable_assets(market, method):
    tradable = np.ones(market.close.shape, dtype=bool)
    tradable[:300, 0] = False  # listed late
    tradable[400:, 1] = False  # delisted
    tradable[200:220, 2] = False  # suspended for a month
    config = config_of(method)
    schedule = allocation_schedule(with_tradable(market, tradable), config)
    weights = schedule.weights
    assert weights.shape == market.close.shape and np.all(np.isfinite(weights))
    assert weights.min() >= 0.0
    assert np.all(weights.sum(axis=1) <= config.invest + 1e-9)
    assert weights.max() <= config.max_weight + 1e-9
    assert np.all(weights[~tradable] == 0.0)
    assert schedule.fallbacks == ()
    # The late listing enters at a rebalance, and a fit only once the window holds enough of its returns.
    listed = 300 if method == "equal_weight" else 300 + config.history_needed
    entry = -(-listed // config.rebalance_every) * config.rebalance_every
    assert not weights[:entry, 0].any()
    assert weights[entry, 0] > 0 or config.is_momentum  # momentum holds only the best few
    if method != "equal_weight":  # after the warm-up the method really allocates
        assert np.ptp(weights[-1][weights[-1] > 0]) > 1e-4 or config.is_momentum
        assert not np.allclose(weights[-1], weights[0])


@pytest.mark.parametrize("method", ALLOCATORS)
def test_the_weights_at_a_close_never_see_a_later_bar(market, method):
    config = config_of(method)
    full = weight_schedule(market, config)
    start = 150
    period = weight_schedule(market, config, start=market.dates[start])
    for cut in (60, 200, 333):
        truncated = market.between(market.dates[0], market.dates[cut])
        np.testing.assert_array_equal(weight_schedule(truncated, config), full[: cut + 1])
        np.testing.assert_array_equal(weights_at(truncated, -1, config), weights_at(market, cut, config))
        if cut > start:  # a period starting mid-panel, cut at the same close
            np.testing.assert_array_equal(
                weight_schedule(truncated, config, start=market.dates[start]), period[: cut + 1 - start]
            )


def test_a_future_shock_leaves_every_earlier_row_alone(market):
    shocked_close = market.close.copy()
    shocked_close[301:] *= np.random.default_rng(0).uniform(0.5, 1.5, shocked_close[301:].shape)
    shocked = replace(market, close=shocked_close)
    for method in ALLOCATORS:
        config = config_of(method)
        before, after = weight_schedule(market, config), weight_schedule(shocked, config)
        np.testing.assert_array_equal(before[:301], after[:301])
        assert method == "equal_weight" or not np.array_equal(before[301:], after[301:])


@pytest.mark.parametrize("method", ALLOCATORS)
def test_the_same_input_gives_the_same_weights(market, method):
    config = config_of(method)
    np.testing.assert_array_equal(weight_schedule(market, config), weight_schedule(market, config))


def test_weights_change_only_on_rebalance_dates(market):
    for method in ALLOCATORS:
        weights = weight_schedule(market, config_of(method))
        changed = np.flatnonzero(np.any(weights[1:] != weights[:-1], axis=1)) + 1
        assert all(is_rebalance_day(day, CONFIG) for day in changed), method


@pytest.mark.parametrize("method", ["equal_weight", "minimum_variance", "momentum"])
def test_the_backtest_trades_only_on_rebalance_dates(market, method):
    config = config_of(method)
    record = EventDrivenBacktester(market, PLAIN).run_targets(
        allocator_targets(weight_schedule(market, config), config)
    )
    decided = [day for day in range(market.n_steps - 1) if is_rebalance_day(day, config)]
    fill_dates = set(market.dates[np.array(decided) + 1])  # decided at a close, filled at the next open
    traded = set(record.trades["date"])
    assert traded and traded <= fill_dates
    assert (record.traded_notional[~record.traded_notional.index.isin(fill_dates)] == 0.0).all()


def test_minimum_variance_has_less_in_sample_variance_than_equal_weight(market):
    config = config_of("minimum_variance", lookback=market.n_steps - 1, min_history=market.n_steps - 1)
    returns = market.daily_returns()[1:]
    minimum = weights_at(market, -1, config)
    equal = weights_at(market, -1, replace(config, method="equal_weight"))
    assert np.var(returns @ minimum) < 0.8 * np.var(returns @ equal)


def test_skfolio_matches_the_projects_own_sizing(market):
    returns = market.daily_returns()[1:]
    covariance = LedoitWolf().fit(returns).covariance_
    parity, reason = fit_weights(returns, config_of("risk_parity", max_weight=None))
    assert reason is None
    np.testing.assert_allclose(parity, risk_parity_weights(covariance), atol=1e-5)
    inverse, _ = fit_weights(returns, config_of("inverse_volatility"))
    np.testing.assert_allclose(inverse, inverse_volatility_weights(returns.std(axis=0, ddof=1)), atol=1e-9)


def test_momentum_holds_the_best_twelve_minus_one_returns(market):
    config = config_of("momentum", momentum_top=0.3)
    day = market.n_steps - 1
    close = market.close
    score = close[day - config.momentum_skip] / close[day - config.momentum_lookback] - 1.0
    weights = weights_at(market, day, config)
    # 30 % of 10 is 3 names, but a 25 % cap needs 4 to invest fully.
    assert set(np.flatnonzero(weights)) == set(np.argsort(-score)[:4])
    np.testing.assert_allclose(weights[weights > 0], config.invest / 4)


def test_cap_weights_spreads_the_excess_and_keeps_the_order():
    capped = cap_weights(np.array([0.6, 0.2, 0.1, 0.05, 0.05]), 0.25)
    np.testing.assert_allclose(capped.sum(), 1.0)
    assert capped.max() <= 0.25 and np.all(np.diff(capped) <= 1e-15)
    np.testing.assert_allclose(cap_weights(np.array([1.0, 0.0]), 0.25), [0.25, 0.25])  # the rest is cash
    np.testing.assert_allclose(cap_weights(np.array([1.0, 0, 0, 0, 0]), 0.25), [0.25] + [0.1875] * 4)


@pytest.mark.parametrize("n_assets", [3, 4])
def test_assets_that_only_just_fill_the_cap_get_it_without_an_optimiser(market, monkeypatch, n_assets):
    def unreachable(config):
        raise AssertionError("no optimiser is needed when every weight is the cap")

    returns = np.diff(np.log(market.close[:, :n_assets]), axis=0)[-126:]
    for method in ("minimum_variance", "risk_parity", "hierarchical_risk_parity", "mean_variance"):
        monkeypatch.setitem(methods.OPTIMISERS, method, unreachable)
        weights, fallback = fit_weights(returns, config_of(method, max_weight=0.25))
        assert fallback is None
        np.testing.assert_allclose(cap_weights(weights, 0.25), 0.25)


def test_a_failing_optimiser_falls_back_to_equal_weight_with_its_reason(market, monkeypatch, caplog):
    class Diverging:
        def fit(self, returns):
            raise RuntimeError("solver did not converge")

    monkeypatch.setitem(methods.OPTIMISERS, "minimum_variance", lambda config: Diverging())
    config = config_of("minimum_variance")
    with caplog.at_level(logging.WARNING, logger="trading_core.allocators.methods"):
        allocation = allocation_at(market, -1, config)
    assert "solver did not converge" in allocation.fallback
    assert "solver did not converge" in caplog.text
    np.testing.assert_allclose(allocation.weights, config.invest / market.n_assets)
    result = backtest_allocator(market, market.dates[200], market.dates[-1], PLAIN, config)
    assert len(result.schedule.fallbacks) == len(range(0, market.n_steps - 200, config.rebalance_every))
    assert result.record.equity.notna().all()


def test_the_equal_weight_backtest_matches_a_hand_computation(market):
    config = config_of("equal_weight", invest=0.9)  # enough cash that no overnight gap cuts a purchase
    record = EventDrivenBacktester(market, PLAIN).run_targets(
        allocator_targets(weight_schedule(market, config), config)
    )
    rate, n = 0.001, market.n_assets
    cash, holdings = PLAIN.initial_amount, np.zeros(n)
    equity = [cash]
    for day in range(market.n_steps - 1):
        close, next_open = market.close[day], market.open[day + 1]
        if day % config.rebalance_every == 0:
            target = np.floor(config.invest / n * (cash + holdings @ close) / close)
            trade = target - holdings
            cash -= trade @ next_open + rate * np.abs(trade) @ next_open
            holdings = target
        equity.append(cash + holdings @ market.close[day + 1])
    np.testing.assert_allclose(record.equity.to_numpy(), equity, rtol=1e-12)
    assert record.equity.iloc[-1] != pytest.approx(PLAIN.initial_amount, rel=1e-3)


def test_backtest_allocators_fits_on_the_history_before_the_period(market):
    start, end = market.dates[260], market.dates[-1]
    results = backtest_allocators(market, start, end, EnvSpec(), CONFIG)
    assert list(results) == list(ALLOCATORS)
    period = market.between(start, end)
    for method, result in results.items():
        assert result.record.equity.index.equals(period.dates)
        assert result.metrics.days == period.n_steps
        np.testing.assert_array_equal(
            result.schedule.weights, weight_schedule(market, config_of(method), start=start)
        )
        if method != "equal_weight":
            # Day 0 of the period is already a fitted allocation, not the warm-up's equal weights.
            assert not np.allclose(result.schedule.weights[0], CONFIG.invest / market.n_assets)
    assert pd.Series({m: r.metrics.turnover for m, r in results.items()}).gt(0).all()


def test_sector_momentum_holds_the_best_sectors_by_their_equal_weight_return(market):
    config = config_of("sector_momentum", sector_top=2)
    day = market.n_steps - 1
    returns = pd.DataFrame(market.close, columns=market.tickers).pct_change()
    # The window's returns up to the close, less the last momentum_skip bars, averaged inside each sector.
    kept = returns.iloc[day - config.momentum_lookback + 1 : day - config.momentum_skip + 1]
    by_sector = kept.T.groupby(list(market.sectors)).mean().T
    best = list((1.0 + by_sector).prod().sort_values(ascending=False).index[:2])
    members = [tic for tic, sector in zip(market.tickers, market.sectors, strict=True) if sector in best]
    assert len(members) >= 4  # enough to invest fully under the 25 % cap, so no third sector is needed
    allocation = allocation_at(market, day, config)
    assert allocation.fallback is None
    held = {market.tickers[i] for i in np.flatnonzero(allocation.weights)}
    assert held == set(members)
    expected = pd.Series(
        {
            tic: 0.5 / sum(s == sector for s in market.sectors)
            for tic, sector in zip(market.tickers, market.sectors, strict=True)
            if tic in members
        }
    )
    capped = cap_weights(expected.reindex(market.tickers, fill_value=0.0).to_numpy(), config.cap)
    np.testing.assert_allclose(allocation.weights, capped * config.invest)


def test_sector_momentum_adds_sectors_until_the_cap_can_be_filled(market):
    config = config_of("sector_momentum", sector_top=1)
    weights = weight_schedule(market, config)
    fitted = weights[config.history_needed + config.rebalance_every :]
    held = (fitted > 0).sum(axis=1)
    assert held.min() >= 4 and np.allclose(fitted.sum(axis=1), config.invest)
    assert fitted.max() <= config.cap * config.invest + 1e-12


def test_sector_momentum_with_one_sector_or_none_is_plain_momentum_and_says_so(market, unlabelled):
    config = config_of("sector_momentum")
    momentum = weights_at(market, -1, config_of("momentum"))
    one_sector = with_sectors(market, dict.fromkeys(market.tickers, "Information Technology"))
    for panel, reason in (
        (one_sector, "in 1 known sector(s) ['Information Technology']"),
        (unlabelled, "no sector labels"),
    ):
        allocation = allocation_at(panel, -1, config)
        assert reason in allocation.fallback
        np.testing.assert_array_equal(allocation.weights, momentum)
    returns = market.daily_returns()[-126:]
    assert np.array_equal(fit_weights(returns, config, None)[0], momentum_weights(returns, config))
    with pytest.raises(ValueError, match="sector for every ticker"):
        fit_weights(returns, config, ["Energy"] * 3)
    with pytest.raises(ValueError, match="one non-empty label per ticker"):
        replace(market, sectors=("Energy",) * 3)
    with pytest.raises(ValueError, match=r"no sector for ticker\(s\) \['WMT'\]"):
        with_sectors(market, {tic: "Energy" for tic in market.tickers[:-1]})


def test_sector_labels_reach_the_backtest_and_the_prior_cache(market, unlabelled):
    start, end = market.dates[260], market.dates[-1]
    labels = dict(zip(market.tickers, market.sectors, strict=True))
    methods_ = ("momentum", "sector_momentum")
    threaded = backtest_allocators(unlabelled, start, end, EnvSpec(), CONFIG, methods_, sectors=labels)
    carried = backtest_allocators(market, start, end, EnvSpec(), CONFIG, methods_)
    bare = backtest_allocators(unlabelled, start, end, EnvSpec(), CONFIG, methods_)
    np.testing.assert_array_equal(
        threaded["sector_momentum"].schedule.weights, carried["sector_momentum"].schedule.weights
    )
    assert threaded["sector_momentum"].schedule.fallbacks == ()
    # Without labels the run goes on as plain momentum, every refit saying why.
    np.testing.assert_array_equal(bare["sector_momentum"].schedule.weights, bare["momentum"].schedule.weights)
    assert len(bare["sector_momentum"].schedule.fallbacks) == len(
        range(0, end_offset(market, start), CONFIG.rebalance_every)
    )
    config = config_of("sector_momentum")
    assert not np.array_equal(prior_weights(market, config), prior_weights(unlabelled, config))


def end_offset(market: MarketArrays, start: pd.Timestamp) -> int:
    return market.n_steps - int(market.dates.searchsorted(start))


def test_sector_momentum_never_holds_the_unknown_sector(market):
    config = config_of("sector_momentum", sector_top=3)
    labels = dict(zip(market.tickers, market.sectors, strict=True)) | {"AAPL": "Unknown", "MSFT": "Unknown"}
    weights = weight_schedule(with_sectors(market, labels), config)
    unknown = [market.tickers.index("AAPL"), market.tickers.index("MSFT")]
    first_fit = -(-config.history_needed // config.rebalance_every) * config.rebalance_every  # after warm-up
    assert weights[first_fit:].sum() > 0 and not weights[first_fit:, unknown].any()
    # Two known assets cannot fill a 25 % cap: plain momentum, and the reason.
    only_two = dict.fromkeys(market.tickers, "Unknown") | {"CVX": "Energy", "JPM": "Financials"}
    allocation = allocation_at(with_sectors(market, only_two), -1, config)
    assert "known sectors hold 2 assets, the cap needs 4" in allocation.fallback
    np.testing.assert_array_equal(allocation.weights, weights_at(market, -1, config_of("momentum")))
