"""The sizing layer: each mode's properties on a returns window, and the overlay over allocators and buy-and-hold
through the real backtester on Dow-30 bars (no lookahead, reproducible, no turnover where the candidate holds,
the risk manager still reviewing every sized target)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from trading_core.allocators.config import AllocatorConfig
from trading_core.allocators.schedule import allocation_schedule, is_rebalance_day
from trading_core.evaluation import leaderboard
from trading_core.evaluation.allocator_backtests import allocator_targets, backtest_allocator
from trading_core.evaluation.backtester import Decide, EventDrivenBacktester, buy_and_hold_targets
from trading_core.evaluation.sizing_overlays import (
    SIZED_KIND,
    backtest_sized,
    backtest_sized_allocator,
    every_sizing,
    sized_batch_targets,
    sized_candidate_runs,
    sized_name,
    sized_targets,
    sizing_comparison,
)
from trading_core.market.arrays import MarketArrays
from trading_core.market.costs import CostModel, NoImpact, ProportionalCommission
from trading_core.market.execution import ExecutionConfig
from trading_core.market.limits import RiskLimits
from trading_core.market.measures import PERIODS_PER_YEAR, portfolio_volatility, sample_covariance
from trading_core.market.simulator import PortfolioSimulator, SimulationConfig
from trading_core.market.sizing import SIZING_MODES, SizingConfig, capped_kelly_fraction, size_weights

# Proportional commission, no spread, impact, volume cap or risk manager: the overlay's own behaviour, unclipped.
PLAIN = SimulationConfig(
    cost_model=CostModel(ProportionalCommission(0.001), NoImpact()),
    spread="none",
    execution=ExecutionConfig(participation_cap=None),
    risk=None,
)
START, END = "2018-01-01", "2018-12-31"
ALLOCATOR = AllocatorConfig(method="equal_weight")


@pytest.fixture(scope="module")
def market(slice_bars) -> MarketArrays:
    """AAPL, JPM, KO, MSFT 2015-2019: the full history a 2018 period is cut from."""
    return MarketArrays.from_features(slice_bars, feature_names=[])


@pytest.fixture(scope="module")
def history(market) -> MarketArrays:
    return market.between(market.dates[0], END)


@pytest.fixture(scope="module")
def period(history) -> MarketArrays:
    return history.between(START, END)


@pytest.fixture(scope="module")
def allocator(history) -> Decide:
    return allocator_targets(allocation_schedule(history, ALLOCATOR, start=START).weights, ALLOCATOR)


def window_of(seed: int, vols: np.ndarray, means: np.ndarray | None = None, length: int = 63) -> np.ndarray:
    """A seeded returns window ``[length, N]`` of correlated assets with about the given daily volatilities."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=(length, 1))
    own = rng.normal(size=(length, len(vols)))
    shocks = (0.5 * common + own) / np.sqrt(1.25)
    # Demeaned, so the window's sample means are exactly ``means``.
    return (shocks - shocks.mean(axis=0)) * vols + (0.0 if means is None else means)


def recorded(decide: Decide) -> tuple[Decide, dict[int, np.ndarray]]:
    """The decision function and every target it returned, per day."""
    seen: dict[int, np.ndarray] = {}

    def wrapper(day: int, simulator: PortfolioSimulator) -> np.ndarray:
        targets = decide(day, simulator)
        seen[day] = np.array(targets, dtype=np.float64, copy=True)
        return targets

    return wrapper, seen


# --------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mode": "martingale"}, "sizing mode"),
        ({"lookback": 1}, "lookback"),
        ({"lookback": 10.5}, "lookback"),
        ({"kelly_fraction": 0.0}, "kelly_fraction"),
        ({"kelly_cap": -0.1}, "kelly_cap"),
        ({"target_volatility": float("nan")}, "target_volatility"),
        ({"max_leverage": 0.0}, "max_leverage"),
    ],
)
def test_a_bad_config_names_what_is_wrong(changes, message):
    with pytest.raises(ValueError, match=message):
        SizingConfig(**changes)


def test_the_kelly_defaults_are_written_once():
    assert capped_kelly_fraction(0.01, 1e-4) == pytest.approx(SizingConfig.kelly_cap)
    assert capped_kelly_fraction(1e-6, 1e-4) == pytest.approx(SizingConfig.kelly_fraction * 1e-2)
    assert [config.mode for config in every_sizing()] == list(SIZING_MODES[1:])


# --------------------------------------------------------------------------------------------------------------
# Each mode on a returns window
# --------------------------------------------------------------------------------------------------------------

VOLS = np.array([0.01, 0.02, 0.015, 0.03, 0.025])
SIGNAL = np.array([0.3, 0.0, 0.2, 0.25, -0.15])  # one asset not held, one short


def test_none_returns_the_signal():
    np.testing.assert_array_equal(size_weights(SIGNAL, window_of(0, VOLS), SizingConfig()), SIGNAL)


def test_inverse_volatility_is_proportional_to_one_over_vol_at_the_candidates_gross():
    window = window_of(1, VOLS)
    sized = size_weights(SIGNAL, window, SizingConfig(mode="inverse_volatility"))
    held = SIGNAL != 0
    assert sized[~held] == 0.0 and np.array_equal(np.sign(sized), np.sign(SIGNAL))
    assert np.abs(sized).sum() == pytest.approx(np.abs(SIGNAL).sum(), rel=1e-12)
    product = np.abs(sized[held]) * window[:, held].std(axis=0, ddof=1)
    np.testing.assert_allclose(product, product[0], rtol=1e-12)


def test_risk_parity_equalises_contributions_on_the_trailing_covariance():
    window = window_of(2, VOLS)
    sized = size_weights(SIGNAL, window, SizingConfig(mode="risk_parity"))
    held = SIGNAL != 0
    assert sized[~held] == 0.0 and np.array_equal(np.sign(sized), np.sign(SIGNAL))
    assert np.abs(sized).sum() == pytest.approx(np.abs(SIGNAL).sum(), rel=1e-12)
    cov = sample_covariance(window)
    contributions = sized * (cov @ sized)
    np.testing.assert_allclose(contributions[held], contributions[held].mean(), rtol=1e-8)


def test_fractional_kelly_stays_within_its_cap_and_the_candidates_gross():
    means = np.array([0.002, 0.001, -0.002, 0.0005, -0.001])
    window = window_of(3, VOLS, means)
    small = SizingConfig(mode="fractional_kelly", kelly_fraction=0.05, kelly_cap=0.2)
    sized = size_weights(SIGNAL, window, small)
    edge = window.mean(axis=0) * np.sign(SIGNAL)
    expected = np.sign(SIGNAL) * capped_kelly_fraction(edge, window.var(axis=0, ddof=1), 0.2, 0.05)
    np.testing.assert_allclose(sized, expected, rtol=1e-12)  # the sum stays below the gross: Kelly as it is
    assert np.abs(sized).max() <= 0.2 and np.abs(sized).sum() <= np.abs(SIGNAL).sum()
    full = size_weights(
        SIGNAL, window, SizingConfig(mode="fractional_kelly", kelly_fraction=5.0, kelly_cap=0.6)
    )
    assert np.abs(full).sum() == pytest.approx(np.abs(SIGNAL).sum(), rel=1e-12)  # scaled down to the gross
    assert np.all(np.sign(full) * np.sign(SIGNAL) >= 0)  # never the other side of the candidate
    # A long whose trailing edge is negative is closed.
    long_loser = np.array([0.0, 0.0, 0.5, 0.0, 0.0])
    assert not size_weights(long_loser, window, small).any()


def test_volatility_target_hits_its_target_on_the_trailing_window():
    window = window_of(4, VOLS)
    config = SizingConfig(mode="volatility_target", target_volatility=0.08, max_leverage=2.0)
    sized = size_weights(SIGNAL, window, config)
    volatility = portfolio_volatility(sized, sample_covariance(window)) * np.sqrt(PERIODS_PER_YEAR)
    assert volatility == pytest.approx(0.08, rel=1e-10)
    held = SIGNAL != 0
    scale = sized[held] / SIGNAL[held]
    np.testing.assert_allclose(
        scale, scale[0], rtol=1e-12
    )  # the whole vector scaled: the signal's shape kept
    assert sized[~held] == 0.0
    # A target too high for the leverage cap stops at the cap.
    capped = size_weights(SIGNAL, window, replace(config, target_volatility=5.0))
    assert np.abs(capped).sum() == pytest.approx(2.0, rel=1e-12)
    assert np.abs(size_weights(SIGNAL, window, config, max_gross=0.5)).sum() <= 0.5 + 1e-12


# --------------------------------------------------------------------------------------------------------------
# The overlay through the backtester
# --------------------------------------------------------------------------------------------------------------


def assert_same_record(left, right) -> None:
    pd.testing.assert_series_equal(left.equity, right.equity)
    pd.testing.assert_frame_equal(left.positions, right.positions)
    pd.testing.assert_frame_equal(left.trades, right.trades)


def test_none_is_the_unsized_candidate_exactly(period, history, allocator):
    assert sized_targets(allocator, SizingConfig(), history) is allocator
    records = backtest_sized(allocator, period, PLAIN, every_sizing(), history)
    alone = EventDrivenBacktester(period, PLAIN).run_targets(allocator)
    assert list(records) == ["none", *SIZING_MODES[1:]]
    assert_same_record(records["none"], alone)
    # ... which is the allocator's own backtest on the full panel.
    assert_same_record(records["none"], backtest_allocator(history, START, END, PLAIN, ALLOCATOR).record)
    for mode in SIZING_MODES[1:]:  # every mode really re-sizes
        assert not records[mode].positions.equals(records["none"].positions), mode


def test_a_batched_mode_equals_its_own_backtest(period, history, allocator):
    config = SizingConfig(mode="risk_parity")
    records = backtest_sized(allocator, period, PLAIN, [config], history)
    alone = EventDrivenBacktester(period, PLAIN).run_targets(sized_targets(allocator, config, history))
    assert_same_record(records["risk_parity"], alone)


def test_the_same_inputs_give_the_same_result_fitted_once_or_twice(market):
    first = backtest_sized_allocator(market, START, END, PLAIN, ALLOCATOR)
    fitted = backtest_allocator(market, START, END, PLAIN, ALLOCATOR).schedule
    second = backtest_sized_allocator(market, START, END, PLAIN, ALLOCATOR, schedule=fitted)
    for mode, record in first.items():
        assert_same_record(record, second[mode])


def shocked(market: MarketArrays, after: int, factor: float = 1.7) -> MarketArrays:
    """The panel with every price after row ``after`` multiplied by ``factor``."""
    scale = np.ones(market.n_steps)
    scale[after + 1 :] = factor
    prices = {field: getattr(market, field) * scale[:, None] for field in ("open", "high", "low", "close")}
    return replace(market, **prices)


@pytest.mark.parametrize("with_history", [True, False])
def test_a_decision_reads_no_bar_after_its_close(history, period, allocator, with_history):
    # A rebalance past the warm-up of a period without history: the overlay sizes that very decision.
    decision_day = 4 * ALLOCATOR.rebalance_every
    assert decision_day >= SizingConfig.lookback
    configs = (SizingConfig(), *every_sizing())  # row 0 unsized, to show the decision really is re-sized
    full, seen_full = recorded(sized_batch_targets(allocator, configs, history if with_history else None))
    EventDrivenBacktester(period, PLAIN).run_batch(full, len(configs))
    # Truncated: the period ends the bar after the decision (its fills need it) and that bar is shocked;
    # the sizing history ends at the decision's close.
    cut = shocked(period.between(period.dates[0], period.dates[decision_day + 1]), decision_day)
    truncated_history = history.between(history.dates[0], period.dates[decision_day])
    short, seen_short = recorded(
        sized_batch_targets(allocator, configs, truncated_history if with_history else None)
    )
    EventDrivenBacktester(cut, PLAIN).run_batch(short, len(configs))
    assert sorted(seen_short) == list(range(decision_day + 1))
    for day in seen_short:
        np.testing.assert_array_equal(seen_short[day], seen_full[day])
    decision = seen_full[decision_day]
    assert all(not np.array_equal(decision[0], decision[row]) for row in range(1, len(configs)))


def test_the_history_ends_the_warm_up_at_the_periods_start(period, history, allocator):
    config = SizingConfig(mode="inverse_volatility")
    unsized, seen_unsized = recorded(allocator)
    EventDrivenBacktester(period, PLAIN).run_targets(unsized)
    for source, warm in ((history, False), (None, True)):
        decide, seen = recorded(sized_targets(allocator, config, source))
        EventDrivenBacktester(period, PLAIN).run_targets(decide)
        # Without the history the period's first lookback bars pass the candidate's targets through.
        assert np.array_equal(seen[0], seen_unsized[0]) == warm
        past_warm_up = -(-config.lookback // ALLOCATOR.rebalance_every) * ALLOCATOR.rebalance_every
        assert not np.array_equal(seen[past_warm_up], seen_unsized[past_warm_up])


@pytest.mark.parametrize("mode", SIZING_MODES[1:])
def test_the_overlay_trades_only_when_the_allocator_does_in_whole_shares(period, history, allocator, mode):
    record = EventDrivenBacktester(period, PLAIN).run_targets(
        sized_targets(allocator, SizingConfig(mode=mode), history)
    )
    traded_days = np.flatnonzero(record.traded_notional.to_numpy() > 0)
    # Orders decided at a rebalance close fill at the next open.
    assert all(is_rebalance_day(day - 1, ALLOCATOR) for day in traded_days)
    positions = record.positions.to_numpy()
    np.testing.assert_array_equal(positions, np.round(positions))


def test_over_buy_and_hold_the_overlay_sizes_the_one_purchase(period, history):
    records = backtest_sized(buy_and_hold_targets(), period, PLAIN, every_sizing(), history)
    for mode, record in records.items():
        traded_days = np.flatnonzero(record.traded_notional.to_numpy() > 0)
        assert traded_days.tolist() == [1], mode
    close = period.close[0]
    weights = records["inverse_volatility"].positions.iloc[1].to_numpy() * close
    vol = history.daily_returns()[: history.dates.get_loc(period.dates[0]) + 1][-63:].std(axis=0, ddof=1)
    # Whole shares leave each weight within one share of exactly proportional to 1 / vol.
    np.testing.assert_allclose(weights * vol / (weights * vol).mean(), 1.0, atol=close.max() / weights.min())


def test_the_risk_manager_still_reviews_every_sized_target(period, history, allocator):
    limits = RiskLimits(max_weight=0.2, var_limit=None, drawdown_reduce=None, target_volatility=None)
    simulation = replace(PLAIN, risk=limits)
    config = SizingConfig(mode="volatility_target", target_volatility=0.5, max_leverage=1.0)
    record = EventDrivenBacktester(period, simulation).run_targets(sized_targets(allocator, config, history))
    weights = record.positions.to_numpy() * period.close / record.equity.to_numpy()[:, None]
    assert not record.interventions.empty and "max_weight" in set(record.interventions["rule"])
    # Held between rebalances, weights drift; on each fill date they are within the limit.
    fills = np.flatnonzero(record.traded_notional.to_numpy() > 0)
    assert weights[fills].max() <= 0.2 + 0.01


def test_bad_overlay_inputs_fail_with_one_line(period, history, allocator):
    other = replace(history, tickers=("A", "B", "C", "D"))
    with pytest.raises(ValueError, match="tickers"):
        EventDrivenBacktester(period, PLAIN).run_targets(
            sized_targets(allocator, SizingConfig(mode="risk_parity"), other)
        )
    with pytest.raises(ValueError, match="each sizing mode once"):
        backtest_sized(allocator, period, PLAIN, [SizingConfig(mode="risk_parity")] * 2, history)
    with pytest.raises(ValueError, match="must not hold mode 'none'"):
        backtest_sized(allocator, period, PLAIN, [SizingConfig()], history)
    wrong = allocation_schedule(history, ALLOCATOR, start="2018-02-01")
    with pytest.raises(ValueError, match="schedule dates"):
        backtest_sized_allocator(history, START, END, PLAIN, ALLOCATOR, schedule=wrong)
    with pytest.raises(ValueError, match="SizingConfig"):
        sized_targets(allocator, "risk_parity", history)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sized portfolios"):
        one_row = sized_batch_targets(allocator, [SizingConfig(mode="risk_parity")] * 2, history)
        EventDrivenBacktester(period, PLAIN).run_batch(one_row, 3)


def test_sized_runs_join_the_leaderboard_against_their_candidate(market, monkeypatch):
    if SIZED_KIND not in leaderboard.KINDS:  # until the leaderboard lists the kind itself
        monkeypatch.setattr(leaderboard, "KINDS", (*leaderboard.KINDS, SIZED_KIND))
    validation = backtest_sized_allocator(market, "2017-01-01", "2017-12-31", PLAIN, ALLOCATOR)
    test = backtest_sized_allocator(market, START, END, PLAIN, ALLOCATOR)
    runs = sized_candidate_runs("equal_weight", validation, test)
    assert [run.candidate for run in runs] == [sized_name("equal_weight", m) for m in SIZING_MODES[1:]]
    assert {run.kind for run in runs} == {SIZED_KIND} and runs[0].candidate == "equal_weight+fractional_kelly"
    table = sizing_comparison("equal_weight", validation, test)
    assert table["mode"].tolist() == list(SIZING_MODES)
    assert table.loc[0, "test_sharpe_vs_unsized"] == 0.0
    by_mode = table.set_index("mode")
    for run in runs:
        mode = run.candidate.split("+")[1]
        assert by_mode.loc[mode, "test_sharpe"] == pytest.approx(run.test.sharpe, nan_ok=True)
        assert by_mode.loc[mode, "validation_turnover"] == pytest.approx(run.validation.turnover)
