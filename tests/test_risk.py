"""Risk manager: every rule on hand-built cases, the trading-state machine (latching and re-arming breakers,
exposure scaling before any halt), the pure risk functions, and Hypothesis properties that no approved post-trade
portfolio ever breaches a limit or its exposure cap over random action sequences, batched or one by one."""

from __future__ import annotations

import dataclasses
import pickle
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.stats import norm

from trading_core.market.limits import HaltStatistics, Intervention, RiskLimits, TradingState
from trading_core.market.measures import historical_cvar, historical_var, parametric_var
from trading_core.market.risk import RULES, RiskManager
from trading_core.market.sizing import capped_kelly_fraction, inverse_volatility_weights, risk_parity_weights

OFF = RiskLimits.disabled()


def only(**changes: object) -> RiskLimits:
    """Every limit off except the ones named (long-only unless ``allow_short`` is given)."""
    return dataclasses.replace(OFF, **{"allow_short": False, "max_margin": 0.0, **changes})


def manager(limits: RiskLimits, cash: np.ndarray, holdings: np.ndarray, prices: np.ndarray) -> RiskManager:
    risk = RiskManager(limits, *holdings.shape)
    risk.reset(cash + (holdings * prices).sum(axis=1))
    return risk


def hit(review, rule: str) -> np.ndarray:
    return review.rule_hits[:, RULES.index(rule)]


def post_trade_cash(approved, holdings, prices, cash, cost_buffer):
    order = approved - holdings
    return cash - (order * prices).sum(axis=1) - cost_buffer * (np.maximum(order, 0.0) * prices).sum(axis=1)


def reference_var(
    weights: np.ndarray, window: np.ndarray, method: str, confidence: float, covariance: str = "sample"
) -> np.ndarray:
    """VaR straight from the definitions, with numpy's, scipy's and scikit-learn's own functions."""
    if method == "parametric":
        if covariance == "ledoit_wolf":
            from sklearn.covariance import ledoit_wolf

            cov = ledoit_wolf(window)[0]
        else:
            cov = np.atleast_2d(np.cov(window, rowvar=False))
        return norm.ppf(confidence) * np.sqrt(
            np.maximum(np.einsum("bi,ij,bj->b", weights, cov, weights), 0.0)
        )
    return -np.quantile(weights @ window.T, 1.0 - confidence, axis=1)


# ------------------------------------------------------------------------------------------------ limits


def test_disabled_limits_approve_the_target_unchanged() -> None:
    holdings, prices = np.array([[10.0, -5.0]]), np.array([[10.0, 20.0]])
    risk = manager(RiskLimits.disabled(), np.array([500.0]), holdings, prices)
    target = np.array([[1000.0, -300.0]])
    review = risk.review(target, holdings, prices, np.array([500.0]), np.zeros((60, 2)))
    np.testing.assert_array_equal(review.approved, target)
    assert not review.rule_hits.any() and review.interventions(0) == []
    assert review.approved is not target


def test_limits_validate_their_arguments() -> None:
    with pytest.raises(ValueError, match="var_method"):
        RiskLimits(var_method="monte_carlo")
    with pytest.raises(ValueError, match="var_confidence"):
        RiskLimits(var_confidence=1.0)
    with pytest.raises(ValueError, match="max_weight"):
        RiskLimits(max_weight=-0.1)
    with pytest.raises(ValueError, match="halt_policy"):
        RiskLimits(halt_policy="forever")
    for name in ("rearm_after_bars", "rearm_stages", "stage_bars"):
        with pytest.raises(ValueError, match=name):
            RiskLimits(**{name: 0})
    with pytest.raises(ValueError, match="min_exposure_scale"):
        RiskLimits(min_exposure_scale=1.5)
    with pytest.raises(ValueError, match="target_volatility"):
        RiskLimits(target_volatility=0.0)


def test_defaults_rearm_and_scale_while_disabled_and_live_limits_do_neither() -> None:
    limits = RiskLimits()
    assert limits.halt_policy == "rearm" and limits.drawdown_scaling and limits.target_volatility is not None
    off = RiskLimits.disabled()
    assert not off.drawdown_scaling and off.target_volatility is None and off.max_drawdown_halt is None
    assert limits.for_live() == dataclasses.replace(limits, halt_policy="latch")


def test_limits_pickled_before_rearming_existed_keep_latching_without_scaling() -> None:
    old = RiskLimits(max_weight=0.3)
    for name in ("halt_policy", "rearm_after_bars", "drawdown_scaling", "target_volatility"):
        del old.__dict__[name]  # as a pickle written before these fields existed
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded == dataclasses.replace(
        RiskLimits(max_weight=0.3), halt_policy="latch", drawdown_scaling=False, target_volatility=None
    )
    assert pickle.loads(pickle.dumps(RiskLimits())) == RiskLimits()


def test_no_short_clips_negative_targets_to_zero() -> None:
    holdings, prices, cash = np.zeros((1, 2)), np.array([[10.0, 10.0]]), np.array([1000.0])
    review = manager(only(), cash, holdings, prices).review(np.array([[-5.0, 10.0]]), holdings, prices, cash)
    np.testing.assert_array_equal(review.approved, [[0.0, 10.0]])
    assert hit(review, "no_short").tolist() == [True]
    [event] = review.interventions(7)
    assert (event.env, event.step, event.rule, event.asset) == (0, 7, "no_short", 0)
    assert (event.requested, event.approved) == (-5.0, 0.0)
    assert "short selling not allowed" in event.reason and "-5" in event.reason


def test_max_weight_clips_each_position_value_to_the_cap() -> None:
    holdings, prices, cash = (
        np.zeros((2, 3)),
        np.array([[10.0, 20.0, 0.0], [10.0, 20.0, 5.0]]),
        np.full(2, 1000.0),
    )
    limits = only(max_weight=0.25, allow_short=True)
    target = np.array([[50.0, 5.0, 1e6], [-50.0, 12.5, 10.0]])
    review = manager(limits, cash, holdings, prices).review(target, holdings, prices, cash)
    # 50 x 10 = 50% -> 25 shares; 5 x 20 = 10% stays; a zero price has no value to cap.
    np.testing.assert_allclose(review.approved, [[25.0, 5.0, 1e6], [-25.0, 12.5, 10.0]], rtol=0, atol=1e-12)
    events = review.interventions(0)
    assert [(e.env, e.asset) for e in events] == [(0, 0), (1, 0)]
    assert events[0].requested == 50.0 and events[0].approved == pytest.approx(25.0)
    assert "weight 50.00% of equity 1,000.00 > max_weight 25.00%" in events[0].reason


def test_gross_exposure_scales_the_whole_target() -> None:
    holdings, prices, cash = np.zeros((1, 2)), np.array([[10.0, 10.0]]), np.array([1000.0])
    review = manager(only(max_gross_exposure=1.0), cash, holdings, prices).review(
        np.array([[60.0, 60.0]]), holdings, prices, cash
    )
    np.testing.assert_allclose(review.approved, [[50.0, 50.0]], rtol=1e-15)
    [event] = review.interventions(3)
    assert (event.rule, event.asset) == ("gross_exposure", None)
    assert event.requested == pytest.approx(1.2) and event.approved == pytest.approx(1.0)
    assert "gross exposure 120.00%" in event.reason and "scaled by 0.833333" in event.reason


def test_net_exposure_scales_a_long_short_book() -> None:
    holdings, prices, cash = np.zeros((1, 2)), np.array([[10.0, 10.0]]), np.array([1000.0])
    limits = only(max_net_exposure=0.5, allow_short=True, max_margin=1.0)
    review = manager(limits, cash, holdings, prices).review(np.array([[80.0, -10.0]]), holdings, prices, cash)
    np.testing.assert_allclose(review.approved, [[80.0 * 5 / 7, -10.0 * 5 / 7]], rtol=1e-14)
    assert hit(review, "net_exposure").tolist() == [True] and not hit(review, "gross_exposure").any()


def _window(rows: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    factor = rng.normal(0.0, 0.015, (rows, 1))
    return factor + rng.normal(0.0, 0.01, (rows, 3))


@pytest.mark.parametrize("method", ["historical", "parametric"])
def test_var_limit_scales_the_portfolio_down_to_the_limit(method: str) -> None:
    window = _window()
    holdings, prices, cash = np.zeros((2, 3)), np.array([[10.0, 20.0, 40.0]] * 2), np.full(2, 10_000.0)
    target = np.array([[300.0, 150.0, 75.0], [10.0, 5.0, 2.5]])  # 90% and 3% invested
    limits = only(var_limit=0.015, var_method=method, var_confidence=0.95)
    review = manager(limits, cash, holdings, prices).review(target, holdings, prices, cash, window)
    weights = target * prices / 10_000.0
    var = reference_var(weights, window, method, 0.95)
    assert var[0] > 0.015 > var[1]
    np.testing.assert_allclose(review.approved[0], target[0] * 0.015 / var[0], rtol=1e-12)
    np.testing.assert_array_equal(review.approved[1], target[1])
    approved_var = reference_var(review.approved * prices / 10_000.0, window, method, 0.95)
    assert approved_var[0] == pytest.approx(0.015, rel=1e-12)
    [event] = review.interventions(0)
    assert event.rule == "var_limit" and event.requested == pytest.approx(var[0], rel=1e-12)
    assert f"{method} VaR(95%)" in event.reason and "over 60 bars" in event.reason


def test_var_is_skipped_without_enough_history() -> None:
    holdings, prices, cash = np.zeros((1, 3)), np.array([[10.0, 20.0, 40.0]]), np.array([10_000.0])
    risk = manager(only(var_limit=0.001), cash, holdings, prices)
    target = np.array([[300.0, 150.0, 75.0]])
    for window in (None, _window(rows=19)):
        np.testing.assert_array_equal(risk.review(target, holdings, prices, cash, window).approved, target)
    assert hit(risk.review(target, holdings, prices, cash, _window(rows=20)), "var_limit").all()


def test_cash_rule_scales_buys_exactly_to_the_floor_and_leaves_sells() -> None:
    holdings, prices, cash = np.array([[10.0, 0.0]]), np.array([[10.0, 10.0]]), np.array([1000.0])
    limits = only(cost_buffer=0.01)
    target = np.array([[0.0, 150.0]])
    review = manager(limits, cash, holdings, prices).review(target, holdings, prices, cash)
    # Cash 1000 + 100 from the sale must pay 1.01 x the buy notional: 1100 / 1515 of the 150 shares.
    np.testing.assert_allclose(review.approved, [[0.0, 150.0 * 1100.0 / 1515.0]], rtol=1e-14)
    assert post_trade_cash(review.approved, holdings, prices, cash, 0.01)[0] == pytest.approx(0.0, abs=1e-9)
    [event] = review.interventions(0)
    assert event.rule == "cash" and event.requested == pytest.approx(-415.0)
    assert "post-trade cash -415.00 < floor" in event.reason and "buys scaled by 0.726073" in event.reason


def test_cash_rule_allows_margin_down_to_the_limit() -> None:
    holdings, prices, cash = np.zeros((1, 1)), np.array([[10.0]]), np.array([1000.0])
    limits = only(cost_buffer=0.0, max_margin=0.5)
    risk = manager(limits, cash, holdings, prices)
    np.testing.assert_array_equal(
        risk.review(np.array([[150.0]]), holdings, prices, cash).approved, [[150.0]]
    )
    review = risk.review(np.array([[200.0]]), holdings, prices, cash)
    np.testing.assert_allclose(review.approved, [[150.0]], rtol=1e-14)  # cash -500 = -0.5 x equity


def test_cash_rule_cuts_opening_buys_before_short_covers() -> None:
    # Covering the short in asset 0 is kept whole; only the new long in asset 1 is cut.
    holdings, prices, cash = np.array([[-20.0, 0.0]]), np.array([[10.0, 10.0]]), np.array([1200.0])
    limits = only(allow_short=True, cost_buffer=0.0)
    review = manager(limits, cash, holdings, prices).review(np.array([[0.0, 200.0]]), holdings, prices, cash)
    np.testing.assert_allclose(review.approved, [[0.0, 100.0]], rtol=1e-14)
    [event] = review.interventions(0)
    assert "buys scaled by 0.500000" in event.reason


def test_final_scale_restores_var_after_buy_cuts_unhedge_a_book() -> None:
    # Asset 1 hedges asset 0 perfectly: the requested book has no VaR, but the cash rule can only afford a
    # tenth of the hedge, which leaves most of the asset-0 risk. The final step scales the whole target back.
    signs = np.where(np.arange(40) % 2 == 0, 1.0, -1.0)
    window = np.stack([0.02 * signs, -0.02 * signs], axis=1)
    holdings, prices, cash = np.array([[90.0, 0.0]]), np.array([[10.0, 10.0]]), np.array([100.0])
    limits = only(cost_buffer=0.01, var_limit=0.02, var_method="parametric")
    review = manager(limits, cash, holdings, prices).review(
        np.array([[90.0, 90.0]]), holdings, prices, cash, window
    )
    after_cash = np.array([90.0, 90.0 * 100.0 / 909.0])
    sigma = 0.02 * np.sqrt(40.0 / 39.0)
    var_after_cash = NormalDist().inv_cdf(0.95) * (after_cash[0] - after_cash[1]) * 10.0 / 1000.0 * sigma
    np.testing.assert_allclose(review.approved[0], after_cash * 0.02 / var_after_cash, rtol=1e-12)
    assert (
        hit(review, "cash").all() and hit(review, "final_scale").all() and not hit(review, "var_limit").any()
    )
    approved_var = reference_var(review.approved * prices / 1000.0, window, "parametric", 0.95)
    assert approved_var[0] == pytest.approx(0.02, rel=1e-12)
    assert post_trade_cash(review.approved, holdings, prices, cash, 0.01)[0] >= 0.0
    final = [e for e in review.interventions(0) if e.rule == "final_scale"][0]
    assert "var_limit" in final.reason and final.approved == pytest.approx(0.02 / var_after_cash)


def test_final_scale_sells_when_no_buy_cut_can_meet_the_cash_floor() -> None:
    # Prices rallied: the long book is worth more than the margin allows and no buy is left to cut.
    holdings, prices, cash = np.array([[100.0]]), np.array([[10.0]]), np.array([-600.0])
    limits = only(max_margin=0.5)
    review = manager(limits, cash, holdings, prices).review(holdings.copy(), holdings, prices, cash)
    # equity 400, floor -200: the position may be worth at most 600.
    np.testing.assert_allclose(review.approved, [[60.0]], rtol=1e-12)
    assert hit(review, "final_scale").all() and not hit(review, "cash").any()


def test_non_positive_equity_approves_no_buys() -> None:
    holdings, prices = np.array([[10.0, -5.0, 0.0]]), np.array([[100.0, 10.0, 10.0]])
    cash = np.array([-2000.0])  # equity -1050
    risk = RiskManager(only(allow_short=True), 1, 3)
    risk.reset(np.array([1000.0]))
    review = risk.review(np.array([[20.0, 0.0, 5.0]]), holdings, prices, cash)
    np.testing.assert_array_equal(review.approved, [[10.0, -5.0, 0.0]])
    review = risk.review(np.array([[4.0, -8.0, 0.0]]), holdings, prices, cash)
    np.testing.assert_array_equal(review.approved, [[4.0, -5.0, 0.0]])
    assert {e.rule for e in review.interventions(0)} == {"no_equity"}
    assert "equity -1,050.00 <= 0" in review.interventions(0)[0].reason


def test_zero_prices_and_single_env_stay_finite() -> None:
    holdings, prices, cash = np.zeros((1, 2)), np.array([[0.0, 10.0]]), np.array([1000.0])
    risk = manager(RiskLimits(), cash, holdings, prices)
    window = _window()[:, :2]
    with np.errstate(all="raise"):
        review = risk.review(np.array([[1e9, 1e9]]), holdings, prices, cash, window)
    assert np.isfinite(review.approved).all()
    assert review.approved[0, 1] * 10.0 <= 250.0 + 1e-9


def test_review_leaves_its_inputs_alone_and_broadcasts_one_price_row() -> None:
    holdings, cash = np.array([[10.0, 0.0], [0.0, 5.0]]), np.array([100.0, 100.0])
    prices = np.array([10.0, 20.0])
    target = np.array([[50.0, -1.0], [0.0, 50.0]])
    inputs = [x.copy() for x in (target, holdings, prices, cash)]
    risk = RiskManager(RiskLimits(), 2, 2)
    risk.reset(cash + holdings @ prices)
    review = risk.review(target, holdings, prices, cash, _window()[:, :2])
    for before, after in zip(inputs, (target, holdings, prices, cash), strict=True):
        np.testing.assert_array_equal(before, after)
    assert np.all(np.abs(review.approved * prices) <= 0.25 * (cash + holdings @ prices)[:, None] + 1e-9)
    approved = review.approved.copy()
    review.approved[:] = 0.0  # the log keeps what was decided
    capped = [e for e in review.interventions(0) if (e.env, e.rule) == (0, "max_weight")]
    assert [(e.asset, e.requested, e.approved) for e in capped] == [(0, 50.0, approved[0, 0])]


# ------------------------------------------------------------------------------------------------ states


def test_drawdown_goes_reducing_then_halted_with_one_liquidation() -> None:
    limits = only(
        drawdown_reduce=0.10,
        max_drawdown_halt=0.20,
        allow_short=True,
        max_margin=1.0,
        liquidate_on_halt=True,
        halt_policy="latch",
    )
    risk = RiskManager(limits, 1, 3)
    risk.reset(np.array([1000.0]))
    assert risk.on_bar(np.array([1100.0])).tolist() == [False]  # new peak
    assert risk.on_bar(np.array([980.0])).tolist() == [True]  # 10.9% below 1100
    assert risk.state.tolist() == [TradingState.REDUCING]

    holdings, prices, cash = np.array([[10.0, -5.0, 0.0]]), np.full((1, 3), 10.0), np.array([930.0])
    review = risk.review(np.array([[15.0, -8.0, 3.0]]), holdings, prices, cash)
    np.testing.assert_array_equal(review.approved, holdings)  # no position may grow
    review = risk.review(np.array([[4.0, 2.0, -1.0]]), holdings, prices, cash)
    np.testing.assert_array_equal(review.approved, [[4.0, 0.0, 0.0]])  # shrink, never cross zero
    assert [(e.asset, e.requested, e.approved) for e in review.interventions(2)] == [
        (1, 2.0, 0.0),
        (2, -1.0, 0.0),
    ]
    assert all(e.rule == "reducing" and "REDUCING" in e.reason for e in review.interventions(2))

    assert risk.on_bar(np.array([870.0])).tolist() == [True]  # 20.9% below peak
    assert risk.state.tolist() == [TradingState.HALTED]
    review = risk.review(np.array([[12.0, -5.0, 0.0]]), holdings, prices, cash)
    np.testing.assert_array_equal(review.approved, np.zeros((1, 3)))  # liquidation, once
    assert hit(review, "halt_liquidation").all()
    assert "flattened" in review.interventions(3)[0].reason
    review = risk.review(np.array([[12.0, -5.0, 0.0]]), holdings, prices, cash)
    np.testing.assert_array_equal(review.approved, holdings)  # frozen afterwards
    assert hit(review, "halted").all() and review.interventions(4)[0].rule == "halted"

    risk.on_bar(np.array([1200.0]))  # a recovery does not lift a max-drawdown halt
    assert risk.state.tolist() == [TradingState.HALTED]
    risk.reset(np.array([1200.0]))
    assert risk.state.tolist() == [TradingState.ACTIVE]
    np.testing.assert_array_equal(risk.review(holdings + 1, holdings, prices, cash).approved, holdings + 1)
    log = risk.transitions()
    assert [(env, step, name) for env, step, name, _ in log] == [
        (0, 2, "REDUCING"),
        (0, 3, "HALTED"),
        (0, 0, "ACTIVE"),
    ]
    assert "drawdown 10.91% >= drawdown_reduce 10.00%" in log[0][3]
    assert "drawdown 20.91% >= max_drawdown_halt 20.00%, latched until reset()" in log[1][3]
    assert log[2][3] == "reset"
    assert risk.transitions() == []


# A synthetic equity path: a peak at bar 1, a crash through the 20% breaker at bar 2, a trough, a recovery.
SYNTHETIC_CRASH_AND_RECOVERY = (110.0, 85.0, 80.0, 82.0, 84.0, 86.0, 88.0, 90.0, 92.0, 94.0, 96.0, 98.0)
SYNTHETIC_HALT_BAR = 2  # 85 is 22.7% below the peak of 110


def rearming(**changes: object) -> RiskLimits:
    """Only the max-drawdown breaker: re-arm after 3 bars, then 4 stages of 2 bars each."""
    settings = {"halt_policy": "rearm", "rearm_after_bars": 3, "rearm_stages": 4, "stage_bars": 2}
    return only(max_gross_exposure=1.0, max_drawdown_halt=0.20, **{**settings, **changes})


def walk(risk: RiskManager, path: tuple[float, ...]) -> tuple[list[int], list[float]]:
    """Feed an equity path bar by bar; the state and the exposure cap after each bar."""
    states, caps = [], []
    for equity in path:
        risk.on_bar(np.full(risk.n_envs, equity))
        states.append(int(risk.state[0]))
        caps.append(float(risk.exposure_cap[0]))
    return states, caps


def test_synthetic_crash_rearms_after_the_cooloff_then_ramps_back_to_full_exposure() -> None:
    risk = RiskManager(rearming(), 1, 2)
    risk.reset(np.array([100.0]))
    states, caps = walk(risk, SYNTHETIC_CRASH_AND_RECOVERY)
    rearm = SYNTHETIC_HALT_BAR + 3
    # HALTED for exactly the cool-off: the bar of the crash and the two after it.
    assert states[SYNTHETIC_HALT_BAR - 1 : rearm - 1] == [2, 2, 2]
    assert states[rearm - 1 :] == [0] * (len(states) - rearm + 1)
    # Stages 1/4 .. 3/4 of two bars each, then full exposure.
    assert caps[rearm - 1 :] == [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0]
    assert risk.stage[0] == 0 and risk.peak_equity[0] == 98.0  # the new high-water mark is 84, then new peaks
    [(_, halt_bar, halted, halt_reason), (_, rearm_bar, active, rearm_reason)] = risk.transitions()
    assert (halt_bar, halted, rearm_bar, active) == (SYNTHETIC_HALT_BAR, "HALTED", rearm, "ACTIVE")
    assert "drawdown 22.73% >= max_drawdown_halt 20.00%, re-arms after 3 bars" in halt_reason
    assert rearm_reason == "re-armed after 3 bars: new high-water mark 84.00, exposure stage 1/4"


def test_synthetic_crash_under_latch_stays_halted_until_reset() -> None:
    risk = RiskManager(rearming(halt_policy="latch"), 1, 2)
    risk.reset(np.array([100.0]))
    states, caps = walk(risk, SYNTHETIC_CRASH_AND_RECOVERY)
    assert states == [0] + [2] * (len(states) - 1) and caps == [1.0] * len(caps)
    assert risk.peak_equity[0] == 110.0
    [(_, _, name, reason)] = risk.transitions()
    assert name == "HALTED" and reason.endswith("latched until reset()")


def test_rearmed_exposure_stage_caps_the_review_with_its_reason() -> None:
    risk = RiskManager(rearming(), 1, 2)
    risk.reset(np.array([100.0]))
    walk(risk, SYNTHETIC_CRASH_AND_RECOVERY[: SYNTHETIC_HALT_BAR + 3])  # the re-arm bar: stage 1/4
    holdings, prices, cash = np.zeros((1, 2)), np.array([[1.0, 1.0]]), np.array([84.0])
    review = risk.review(np.array([[42.0, 42.0]]), holdings, prices, cash)
    np.testing.assert_allclose(review.approved, [[10.5, 10.5]], rtol=1e-15)  # 25% of 84
    [event] = review.interventions(5)
    assert (event.rule, event.asset, event.requested, event.approved) == ("exposure_scaling", None, 1.0, 0.25)
    assert event.reason == (
        "gross exposure 100.00% of equity 84.00 > exposure cap 25.00% (max_gross_exposure 100.00% x re-arm "
        "exposure stage 1/4 = 0.2500): target scaled by 0.250000"
    )


def test_rearm_sets_a_new_high_water_mark_and_a_new_crash_halts_again() -> None:
    risk = RiskManager(rearming(), 1, 1)
    risk.reset(np.array([100.0]))
    # Halt at 75 (bar 1), re-arm at 70 (bar 4): 20% below 70 is 56, far below the old peak's breaker at 80.
    states, _ = walk(risk, (75.0, 72.0, 71.0, 70.0, 60.0, 56.5, 55.0))
    assert states == [2, 2, 2, 0, 0, 0, 2]
    assert risk.stage[0] == 0 and risk.exposure_cap[0] == 1.0  # a new halt ends the ramp
    reasons = [reason for *_, reason in risk.transitions()]
    assert "new high-water mark 70.00" in reasons[1] and "drawdown 21.43% >= max_drawdown_halt" in reasons[2]


def test_single_stage_rearms_at_full_exposure() -> None:
    risk = RiskManager(rearming(rearm_stages=1), 1, 1)
    risk.reset(np.array([100.0]))
    states, caps = walk(risk, (75.0, 75.0, 75.0, 75.0))
    assert states == [2, 2, 2, 0] and caps[-1] == 1.0
    assert risk.transitions()[-1][3].endswith("exposure stage 1/1")


def test_a_rearm_during_a_daily_loss_cooldown_is_logged_and_the_cooldown_holds() -> None:
    risk = RiskManager(rearming(daily_loss_limit=0.05, cooldown_bars=3), 1, 1)
    risk.reset(np.array([100.0]))
    # Halt at 75 (also a daily loss), re-arm due at bar 4, where a new 6% loss starts a cooldown.
    states, _ = walk(risk, (75.0, 75.0, 75.0, 70.5, 70.5, 70.5, 70.5))
    assert states == [2, 2, 2, 2, 2, 2, 0]
    log = risk.transitions()
    assert [(step, name) for _, step, name, _ in log] == [(1, "HALTED"), (4, "HALTED"), (7, "ACTIVE")]
    assert log[1][3].startswith("re-armed after 3 bars: new high-water mark 70.50, exposure stage 1/4")
    assert "one-bar loss 6.00% >= daily_loss_limit 5.00%" in log[1][3]


def test_drawdown_scaling_shrinks_the_cap_linearly_instead_of_reducing() -> None:
    limits = only(
        max_gross_exposure=1.0,
        drawdown_reduce=0.10,
        max_drawdown_halt=0.30,
        drawdown_scaling=True,
        min_exposure_scale=0.2,
    )
    risk = RiskManager(limits, 1, 2)
    risk.reset(np.array([100.0]))
    states, caps = walk(risk, (95.0, 89.0, 80.0, 71.0))
    # 1 at 10% drawdown, 0.2 at 30%: 0.96 at 11%, 0.6 at 20%, 0.24 at 29%; never REDUCING.
    assert states == [0, 0, 0, 0]
    np.testing.assert_allclose(caps, [1.0, 0.96, 0.6, 0.24], rtol=1e-12)
    holdings, prices, cash = np.array([[30.0, 30.0]]), np.array([[1.0, 1.0]]), np.array([11.0])
    review = risk.review(np.array([[40.0, 40.0]]), holdings, prices, cash)
    np.testing.assert_allclose(np.abs(review.approved).sum(), 0.24 * 71.0, rtol=1e-12)
    [event] = review.interventions(4)
    assert event.rule == "exposure_scaling" and event.approved == pytest.approx(0.24)
    assert "exposure cap 24.00% (max_gross_exposure 100.00% x drawdown scale 0.2400 at drawdown 29.00%" in (
        event.reason
    )
    assert "0.2 at max_drawdown_halt 30.00%" in event.reason
    # Without drawdown scaling the same path goes REDUCING at drawdown_reduce, as before.
    risk = RiskManager(dataclasses.replace(limits, drawdown_scaling=False), 1, 2)
    risk.reset(np.array([100.0]))
    assert walk(risk, (95.0, 89.0, 80.0, 71.0)) == ([0, 1, 1, 1], [1.0] * 4)


def test_volatility_targeting_scales_the_cap_by_target_over_trailing_volatility() -> None:
    risk = RiskManager(only(max_gross_exposure=1.5, target_volatility=0.2), 1, 2, vol_window=10)
    risk.reset(np.array([1000.0]))
    equity, caps = 1000.0, []
    for bar in range(8):
        equity *= 1.05 if bar % 2 == 0 else 1 / 1.05  # about 80% annualised
        risk.on_bar(np.array([equity]))
        caps.append(float(risk.exposure_cap[0]))
    assert caps[:4] == [1.5] * 4  # fewer than vol_min_periods returns: no estimate, no scaling
    vol = float(risk.volatility[0])  # recorded without volatility_halt
    assert vol > 0.7 and caps[-1] == pytest.approx(1.5 * 0.2 / vol, rel=1e-12)
    assert risk.state[0] == TradingState.ACTIVE
    holdings, prices, cash = np.zeros((1, 2)), np.array([[10.0, 10.0]]), np.array([equity])
    review = risk.review(np.array([[equity / 20, equity / 20]]), holdings, prices, cash)
    [event] = review.interventions(8)
    assert event.rule == "exposure_scaling" and event.approved == pytest.approx(caps[-1])
    assert f"target_volatility 20.00% / trailing volatility {vol:.2%}" in event.reason


def test_reducing_ends_when_the_drawdown_recovers() -> None:
    risk = RiskManager(only(drawdown_reduce=0.10), 1, 1)
    risk.reset(np.array([100.0]))
    risk.on_bar(np.array([85.0]))
    assert risk.state.tolist() == [TradingState.REDUCING]
    risk.on_bar(np.array([95.0]))
    assert risk.state.tolist() == [TradingState.ACTIVE]
    assert risk.transitions()[1][3].startswith("limits back in bounds: drawdown 5.00%")


def test_daily_loss_halts_for_cooldown_bars_then_reactivates() -> None:
    limits = only(daily_loss_limit=0.05, cooldown_bars=3, liquidate_on_halt=False)
    risk = RiskManager(limits, 2, 1)
    risk.reset(np.array([1000.0, 1000.0]))
    states = []
    for equity in ([940.0, 990.0], [940.0, 990.0], [940.0, 990.0], [940.0, 990.0], [940.0, 990.0]):
        risk.on_bar(np.array(equity))
        states.append(risk.state.tolist())
    assert states == [[2, 0], [2, 0], [2, 0], [0, 0], [0, 0]]
    holdings, prices, cash = np.ones((2, 1)), np.ones((2, 1)), np.full(2, 100.0)
    log = risk.transitions()
    assert [(env, step, name) for env, step, name, _ in log] == [(0, 1, "HALTED"), (0, 4, "ACTIVE")]
    assert "one-bar loss 6.00% >= daily_loss_limit 5.00%, halted for 3 bars" in log[0][3]
    # Without liquidate_on_halt a halt only freezes.
    risk.on_bar(np.array([800.0, 990.0]))
    review = risk.review(np.full((2, 1), 5.0), holdings, prices, cash)
    np.testing.assert_array_equal(review.approved, [[1.0], [5.0]])


def test_a_new_loss_during_cooldown_restarts_it() -> None:
    risk = RiskManager(only(daily_loss_limit=0.05, cooldown_bars=2), 1, 1)
    risk.reset(np.array([1000.0]))
    states = []
    for equity in (900.0, 900.0, 800.0, 800.0, 800.0):
        risk.on_bar(np.array([equity]))
        states.append(int(risk.state[0]))
    assert states == [2, 2, 2, 2, 0]


def test_volatility_goes_reducing_while_high() -> None:
    risk = RiskManager(only(volatility_halt=0.5), 1, 1, vol_window=10, vol_min_periods=5)
    risk.reset(np.array([1000.0]))
    equity, states = 1000.0, []
    for bar in range(25):
        # Ten bars of +-5% moves (about 80% annualised), then calm.
        equity *= (1.05 if bar % 2 == 0 else 1 / 1.05) if bar < 10 else 1.0
        risk.on_bar(np.array([equity]))
        states.append(int(risk.state[0]))
    assert states[:4] == [0] * 4  # fewer than vol_min_periods returns
    assert states[4:10] == [1] * 6
    assert states[-5:] == [0] * 5
    assert risk.volatility[0] == 0.0
    reason = risk.transitions()[0][3]
    assert "trailing volatility" in reason and "> volatility_halt 50.00%" in reason


def test_turbulence_goes_reducing_while_above_per_env() -> None:
    risk = RiskManager(only(turbulence_halt=100.0), 3, 1)
    risk.reset(np.full(3, 1000.0))
    assert risk.on_bar(np.full(3, 1000.0), 150.0).tolist() == [True] * 3
    assert risk.on_bar(np.full(3, 1000.0), np.array([50.0, 150.0, 100.0])).tolist() == [True, False, True]
    assert risk.state.tolist() == [0, 1, 0]
    risk.on_bar(np.full(3, 1000.0), None)  # no reading: no turbulence signal
    assert risk.state.tolist() == [0, 0, 0]
    assert "turbulence 150 > turbulence_halt 100" in risk.transitions()[0][3]


def test_partial_reset_by_mask_and_by_index() -> None:
    risk = RiskManager(only(max_drawdown_halt=0.2, halt_policy="latch"), 3, 1)
    risk.reset(np.full(3, 100.0))
    risk.on_bar(np.array([70.0, 70.0, 70.0]))
    assert risk.state.tolist() == [2, 2, 2]
    risk.reset(np.array([70.0, 70.0, 70.0]), envs=np.array([True, False, False]))
    risk.reset(np.array([70.0]), envs=np.array([2]))
    assert risk.state.tolist() == [0, 2, 0]
    risk.on_bar(np.array([60.0, 60.0, 60.0]))  # 14% below the new peaks of 70
    assert risk.state.tolist() == [0, 2, 0]


# ------------------------------------------------------------------------------------------------ functions


def test_parametric_var_matches_the_direct_formula() -> None:
    window = _window()
    weights = np.array([[0.5, 0.3, 0.2], [-0.2, 0.1, 0.4]])
    cov = np.cov(window, rowvar=False)
    expected = [norm.ppf(0.99) * np.sqrt(w @ cov @ w) for w in weights]
    np.testing.assert_allclose(parametric_var(weights, cov, 0.99), expected, rtol=1e-14)


def test_historical_var_and_cvar_on_a_hand_case() -> None:
    pnl = np.array([-0.10, -0.05, -0.02] + [0.01] * 17)
    window = pnl[:, None]
    # 10% quantile of 20 returns: virtual index 1.9 between -0.05 and -0.02.
    assert historical_var(np.array([[1.0]]), window, 0.90)[0] == pytest.approx(0.05 - 0.9 * 0.03, abs=1e-15)
    np.testing.assert_allclose(
        historical_var(np.array([[1.0]]), window, 0.90), -np.quantile(pnl, 0.1), rtol=1e-15
    )
    # The tail at or below the cut-off -0.023 holds -0.10 and -0.05.
    assert historical_cvar(np.array([[1.0]]), window, 0.90)[0] == pytest.approx(0.075, abs=1e-15)
    assert historical_cvar(np.array([[2.0]]), window, 0.90)[0] == pytest.approx(0.15, abs=1e-15)


@settings(max_examples=60, deadline=None)
@given(
    window=hnp.arrays(np.float64, st.tuples(st.integers(20, 80), st.just(3)), elements=st.floats(-0.2, 0.2)),
    weights=hnp.arrays(np.float64, (4, 3), elements=st.floats(-2.0, 2.0)),
    factor=st.floats(0.01, 100.0),
    confidence=st.sampled_from([0.9, 0.95, 0.975, 0.99]),
)
def test_var_estimators_match_numpy_and_are_positively_homogeneous(
    window: np.ndarray, weights: np.ndarray, factor: float, confidence: float
) -> None:
    np.testing.assert_allclose(
        historical_var(weights, window, confidence),
        -np.quantile(weights @ window.T, 1.0 - confidence, axis=1),
        rtol=1e-12,
        atol=1e-15,
    )
    cov = np.cov(window, rowvar=False)
    for var in (
        lambda w: historical_var(w, window, confidence),
        lambda w: parametric_var(w, cov, confidence),
        lambda w: historical_cvar(w, window, confidence),
    ):
        np.testing.assert_allclose(var(factor * weights), factor * var(weights), rtol=1e-9, atol=1e-13)
    assert np.all(
        historical_cvar(weights, window, confidence) >= historical_var(weights, window, confidence) - 1e-12
    )


def test_capped_kelly_fraction() -> None:
    np.testing.assert_allclose(
        capped_kelly_fraction(
            np.array([0.001, 0.0001, -0.001, 0.001, 0.0]), np.array([4e-4, 4e-4, 4e-4, 0.0, 0.0])
        ),
        [0.25, 0.125, 0.0, 0.25, 0.0],
    )
    assert capped_kelly_fraction(0.0004, 0.0004, cap=1.0, fraction=1.0) == pytest.approx(1.0)


def test_inverse_volatility_weights() -> None:
    np.testing.assert_allclose(inverse_volatility_weights(np.array([0.1, 0.2, 0.4])), [4 / 7, 2 / 7, 1 / 7])
    batch = inverse_volatility_weights(np.array([[0.1, 0.1], [0.3, 0.0], [0.0, np.nan]]))
    np.testing.assert_allclose(batch, [[0.5, 0.5], [1.0, 0.0], [0.5, 0.5]])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 12), correlation=st.floats(-0.9, 0.95))
def test_risk_parity_equalises_risk_contributions(seed: int, n: int, correlation: float) -> None:
    rng = np.random.default_rng(seed)
    vol = rng.uniform(0.05, 0.6, n)
    loadings = rng.normal(size=(n, n))
    base = np.corrcoef(loadings @ loadings.T + n * np.eye(n))
    mixed = np.clip(correlation, -1.0 / (n - 1) + 0.05, 0.95) * np.ones((n, n))
    np.fill_diagonal(mixed, 1.0)
    cov = np.outer(vol, vol) * (0.5 * base + 0.5 * mixed)
    weights = risk_parity_weights(cov)
    contributions = weights * (cov @ weights) / (weights @ cov @ weights)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12) and np.all(weights > 0.0)
    np.testing.assert_allclose(contributions, 1.0 / n, rtol=0, atol=1e-6)


def test_risk_parity_of_uncorrelated_assets_is_inverse_volatility() -> None:
    vol = np.array([0.1, 0.2, 0.4])
    np.testing.assert_allclose(
        risk_parity_weights(np.diag(vol**2)), inverse_volatility_weights(vol), rtol=1e-10
    )
    with pytest.raises(ValueError):
        risk_parity_weights(np.diag([0.01, 0.0]))


# ------------------------------------------------------------------------------------------------ properties


def optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


@st.composite
def risk_limits(draw) -> RiskLimits:
    allow_short = draw(st.booleans())
    return RiskLimits(
        max_weight=draw(optional(st.floats(0.05, 1.0))),
        # A flat book must stay affordable (cost buffer on covering every short): shorts need a gross limit.
        max_gross_exposure=draw(st.floats(0.2, 2.0) if allow_short else optional(st.floats(0.2, 2.0))),
        max_net_exposure=draw(optional(st.floats(0.05, 1.5))),
        allow_short=allow_short,
        max_margin=draw(st.sampled_from([0.0, 0.0, 0.1, 0.5])),
        cost_buffer=draw(st.sampled_from([0.0, 0.002, 0.01])),
        var_limit=draw(optional(st.floats(0.002, 0.05))),
        var_method=draw(st.sampled_from(["historical", "parametric"])),
        var_confidence=draw(st.sampled_from([0.9, 0.95, 0.99])),
        drawdown_reduce=draw(optional(st.floats(0.01, 0.2))),
        max_drawdown_halt=draw(optional(st.floats(0.05, 0.4))),
        daily_loss_limit=draw(optional(st.floats(0.01, 0.1))),
        volatility_halt=draw(optional(st.floats(0.05, 1.0))),
        turbulence_halt=draw(optional(st.floats(0.0, 100.0))),
        cooldown_bars=draw(st.integers(0, 3)),
        liquidate_on_halt=draw(st.booleans()),
        halt_policy=draw(st.sampled_from(["rearm", "latch"])),
        rearm_after_bars=draw(st.integers(1, 3)),
        rearm_stages=draw(st.integers(1, 4)),
        stage_bars=draw(st.integers(1, 2)),
        drawdown_scaling=draw(st.booleans()),
        min_exposure_scale=draw(st.sampled_from([0.0, 0.25, 1.0])),
        target_volatility=draw(optional(st.floats(0.05, 1.0))),
    )


@dataclasses.dataclass
class Scenario:
    """A random market and agent: Hypothesis draws the structure, a seeded generator the bulk numbers."""

    limits: RiskLimits
    n_envs: int
    n_assets: int
    steps: int
    zero_price_share: float
    move_vol: float
    window_rows: list[int]
    seed: int

    def start(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shape = (self.n_envs, self.n_assets)
        prices = rng.lognormal(3.0, 1.5, shape) * (rng.random(shape) >= self.zero_price_share)
        low = -0.6 if self.limits.allow_short else 0.0
        weights = rng.uniform(low, 0.6, shape) * (rng.random(shape) < 0.7)
        equity = 10.0 ** rng.uniform(3.0, 6.0, self.n_envs)
        holdings = np.divide(
            weights * equity[:, None], prices, out=rng.uniform(0, 10, shape), where=prices > 0
        )
        return prices, holdings, equity - (holdings * prices).sum(axis=1)

    def target(
        self, rng: np.random.Generator, holdings: np.ndarray, prices: np.ndarray, equity: np.ndarray
    ) -> np.ndarray:
        """Anything an agent may ask for: random long/short books, near-full investment, one all-in bet, hold."""
        shape = holdings.shape
        mode = rng.integers(0, 4, self.n_envs)[:, None]
        weights = np.select(
            [mode == 0, mode == 1, mode == 2],
            [
                rng.uniform(-2.0, 3.0, shape) / self.n_assets,
                rng.dirichlet(np.ones(self.n_assets), self.n_envs) * rng.uniform(0.9, 1.6, (self.n_envs, 1)),
                np.eye(self.n_assets)[rng.integers(0, self.n_assets, self.n_envs)] * rng.uniform(-1.0, 2.0),
            ],
            default=np.nan,
        )
        shares = np.divide(
            weights * np.maximum(equity, 1.0)[:, None], prices, out=weights * 10.0, where=prices > 0
        )
        return np.where(mode == 3, holdings, shares)

    def returns_window(self, rng: np.random.Generator, step: int) -> np.ndarray | None:
        rows = self.window_rows[step]
        if rows == 0:
            return None
        scale = rng.uniform(0.002, 0.05)
        common = rng.normal(0.0, scale, (rows, 1)) * rng.uniform(-1.0, 1.0, self.n_assets)
        return common + rng.standard_t(3, (rows, self.n_assets)) * scale * rng.uniform(
            0.2, 1.0, self.n_assets
        )


@st.composite
def scenarios(draw) -> Scenario:
    steps = draw(st.integers(1, 8))
    return Scenario(
        limits=draw(risk_limits()),
        n_envs=draw(st.integers(1, 4)),
        n_assets=draw(st.integers(1, 6)),
        steps=steps,
        zero_price_share=draw(st.sampled_from([0.0, 0.0, 0.2])),
        move_vol=draw(st.sampled_from([0.002, 0.02, 0.08])),
        window_rows=draw(st.lists(st.sampled_from([0, 10, 20, 35, 60]), min_size=steps, max_size=steps)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def check_review(limits, state, pending, cap, review, target, holdings, prices, cash, window) -> None:
    """Every invariant of one approved target against the portfolios it was reviewed on (and their exposure
    caps ``cap``, as fractions of equity)."""
    approved = review.approved
    equity = cash + (holdings * prices).sum(axis=1)
    rtol = 1e-9
    assert approved.shape == holdings.shape and np.isfinite(approved).all()
    # Rules that did not fire changed nothing, and every intervention belongs to a rule that fired.
    untouched = ~review.rule_hits.any(axis=1)
    np.testing.assert_array_equal(approved[untouched], target[untouched])
    for change in review.interventions(0):
        assert isinstance(change, Intervention) and change.reason
        assert review.rule_hits[change.env, RULES.index(change.rule)]
    for env in range(len(approved)):
        a, h, p, e = approved[env], holdings[env], prices[env], equity[env]
        if state[env] == TradingState.HALTED:
            np.testing.assert_array_equal(
                a, np.zeros_like(h) if pending[env] else h
            )  # only the single flatten
            continue
        if state[env] == TradingState.REDUCING:
            assert np.all(np.abs(a) <= np.abs(h) * (1 + 1e-12)) and np.all(a * h >= 0.0)
        if not e > 0.0:
            assert np.all(a <= h + 1e-12 * np.abs(h))  # no buys without equity
            continue
        values = a * p
        if not limits.allow_short:
            assert np.all(a >= 0.0)
        if limits.max_weight is not None:
            assert np.all(np.abs(values) <= limits.max_weight * e * (1 + rtol))
        if limits.max_gross_exposure is not None:
            assert np.abs(values).sum() <= limits.max_gross_exposure * e * (1 + rtol)
        assert np.abs(values).sum() <= cap[env] * e * (1 + rtol)
        if limits.max_net_exposure is not None:
            assert abs(values.sum()) <= limits.max_net_exposure * e * (1 + rtol)
        post_cash = post_trade_cash(a[None], h[None], p[None], cash[env : env + 1], limits.cost_buffer)[0]
        assert post_cash >= -limits.max_margin * e - rtol * e
        if limits.var_limit is not None and window is not None and len(window) >= 20:
            var = reference_var(
                (values / e)[None], window, limits.var_method, limits.var_confidence, limits.covariance
            )[0]
            assert var <= limits.var_limit * (1 + rtol) + 1e-15


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_no_approved_portfolio_ever_breaches_a_limit(scenario: Scenario) -> None:
    limits, rng = scenario.limits, np.random.default_rng(scenario.seed)
    prices, holdings, cash = scenario.start(rng)
    risk = RiskManager(limits, scenario.n_envs, scenario.n_assets)
    risk.reset(cash + (holdings * prices).sum(axis=1))
    pending = np.zeros(scenario.n_envs, dtype=bool)
    for step in range(scenario.steps):
        target = scenario.target(rng, holdings, prices, cash + (holdings * prices).sum(axis=1))
        window = scenario.returns_window(rng, step)
        state, cap = risk.state.copy(), risk.exposure_cap
        review = risk.review(target, holdings, prices, cash, window)
        check_review(limits, state, pending, cap, review, target, holdings, prices, cash, window)
        for rule in np.asarray(RULES)[review.rule_hits.any(axis=0)]:
            event(f"rule hit: {rule}")
        # Fill at the decision prices, then let the market move and the manager see the close.
        order = review.approved - holdings
        cash = (
            cash
            - (order * prices).sum(axis=1)
            - limits.cost_buffer * (np.maximum(order, 0) * prices).sum(axis=1)
        )
        holdings = review.approved
        prices = prices * (1.0 + np.clip(rng.normal(0.0, scenario.move_vol, prices.shape), -0.3, 0.3))
        changed = risk.on_bar(cash + (holdings * prices).sum(axis=1), rng.uniform(0.0, 150.0))
        pending = changed & (risk.state == TradingState.HALTED) & limits.liquidate_on_halt
        assert changed.dtype == bool and changed.shape == (scenario.n_envs,)
        for env in np.flatnonzero(changed):
            event(f"entered {TradingState(int(risk.state[env])).name}")
        if (risk.exposure_scale < 1.0).any():
            event("exposure scaled")
        if (risk.stage > 0).any():
            event("re-arm stage")
    for env, step, name, reason in risk.transitions():
        assert 0 <= env < scenario.n_envs and 1 <= step <= scenario.steps and name in TradingState.__members__
        assert reason


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_review_is_idempotent_on_its_own_output(scenario: Scenario) -> None:
    """An approved portfolio passes a second review unchanged, up to rounding."""
    rng = np.random.default_rng(scenario.seed)
    prices, holdings, cash = scenario.start(rng)
    risk = RiskManager(scenario.limits, scenario.n_envs, scenario.n_assets)
    risk.reset(cash + (holdings * prices).sum(axis=1))
    target = scenario.target(rng, holdings, prices, cash + (holdings * prices).sum(axis=1))
    window = scenario.returns_window(rng, 0)
    approved = risk.review(target, holdings, prices, cash, window).approved
    again = risk.review(approved, holdings, prices, cash, window).approved
    np.testing.assert_allclose(again, approved, rtol=1e-9, atol=1e-9)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_a_batch_of_portfolios_equals_each_portfolio_alone(scenario: Scenario) -> None:
    """B portfolios in one manager get the approvals, states, caps and transitions each gets on its own."""
    limits, rng = scenario.limits, np.random.default_rng(scenario.seed)
    prices, holdings, cash = scenario.start(rng)
    batch = RiskManager(limits, scenario.n_envs, scenario.n_assets, vol_window=5, vol_min_periods=2)
    alone = [RiskManager(limits, 1, scenario.n_assets, vol_window=5, vol_min_periods=2) for _ in batch.state]
    equity = cash + (holdings * prices).sum(axis=1)
    batch.reset(equity)
    for b, risk in enumerate(alone):
        risk.reset(equity[b : b + 1])
    for step in range(scenario.steps):
        target = scenario.target(rng, holdings, prices, cash + (holdings * prices).sum(axis=1))
        window = scenario.returns_window(rng, step)
        review = batch.review(target, holdings, prices, cash, window)
        for b, risk in enumerate(alone):
            row = slice(b, b + 1)
            single = risk.review(target[row], holdings[row], prices[row], cash[row], window)
            np.testing.assert_allclose(single.approved, review.approved[row], rtol=1e-12, atol=1e-12)
            assert single.rule_hits.tolist() == review.rule_hits[row].tolist()
        order = review.approved - holdings
        cash = cash - (order * prices).sum(axis=1)
        holdings = review.approved
        prices = prices * (1.0 + np.clip(rng.normal(0.0, scenario.move_vol, prices.shape), -0.3, 0.3))
        equity, turbulence = cash + (holdings * prices).sum(axis=1), rng.uniform(0.0, 150.0)
        batch.on_bar(equity, turbulence)
        for b, risk in enumerate(alone):
            risk.on_bar(equity[b : b + 1], turbulence)
            assert (risk.state[0], risk.stage[0]) == (batch.state[b], batch.stage[b])
            np.testing.assert_allclose(risk.exposure_cap, batch.exposure_cap[b : b + 1], rtol=1e-12)
    batched = batch.transitions()
    for b, risk in enumerate(alone):
        assert [(step, name, reason) for _, step, name, reason in risk.transitions()] == [
            (step, name, reason) for env, step, name, reason in batched if env == b
        ]


def test_a_manager_saved_before_rearming_existed_restores_and_runs() -> None:
    risk = RiskManager(rearming(), 2, 1)
    risk.reset(np.full(2, 100.0))
    risk.on_bar(np.array([75.0, 100.0]))
    for name in ("drawdown_scale", "volatility_scale", "exposure_scale", "stage", "_halt_age", "_ramp_age"):
        del risk.__dict__[name]
    risk._log = [(bar, envs, states, causes, figures[:4]) for bar, envs, states, causes, figures in risk._log]
    restored = pickle.loads(pickle.dumps(risk))
    restored.on_bar(np.array([75.0, 100.0]))
    assert restored.state.tolist() == [2, 0] and restored.exposure_cap.tolist() == [1.0, 1.0]
    [(env, step, name, reason)] = restored.transitions()
    assert (env, step, name) == (0, 1, "HALTED") and "max_drawdown_halt" in reason


def test_live_trading_latches_the_limits_it_trained_with() -> None:
    from trading_core.agents.decision_spec import DecisionSpec
    from trading_core.envs.spec import EnvSpec
    from trading_core.live.engine import DecisionEngine

    spec = DecisionSpec(tickers=("AAPL", "MSFT"), feature_columns=("macd",), env_spec=EnvSpec())
    engine = DecisionEngine(policy=None, spec=spec)
    assert spec.env_spec.simulation.risk.halt_policy == "rearm"
    assert engine.risk.limits == spec.env_spec.simulation.risk.for_live()


def test_halt_statistics_count_days_entries_and_exits() -> None:
    assert HaltStatistics.of_states([0, 1, 2, 2, 0, 2, 2, 2]) == HaltStatistics(
        days_halted=5, halts=2, rearms=1
    )
    assert HaltStatistics.of_states(np.array([], dtype=np.int64)) == HaltStatistics(0, 0, 0)


def test_a_backtest_record_reports_its_halt_statistics() -> None:
    import pandas as pd

    from trading_core.evaluation.backtester import BacktestRecord

    risk = RiskManager(rearming(), 1, 1)
    risk.reset(np.array([100.0]))
    states = [0, *walk(risk, SYNTHETIC_CRASH_AND_RECOVERY)[0]]
    dates = pd.bdate_range("2020-01-01", periods=len(states))
    empty = pd.DataFrame()
    record = BacktestRecord(
        equity=pd.Series([100.0, *SYNTHETIC_CRASH_AND_RECOVERY], index=dates),
        positions=empty,
        trades=empty,
        interventions=empty,
        risk_states=pd.Series(states, index=dates, name="risk_state"),
        costs=pd.Series(0.0, index=dates),
        traded_notional=pd.Series(0.0, index=dates),
    )
    assert record.halt_statistics == HaltStatistics(days_halted=3, halts=1, rearms=1)


def test_a_manager_stored_as_json_restores_exactly_and_continues_identically() -> None:
    from trading_core.runtime.stored_json import dumps, loads

    rng = np.random.default_rng(11)
    limits = RiskLimits(max_drawdown_halt=0.08, drawdown_reduce=0.04, volatility_halt=0.9, var_limit=0.02)
    original = RiskManager(limits, 3, 4)
    original.reset(np.full(3, 1_000.0))
    equity_path = 1_000.0 * np.cumprod(1.0 + rng.normal(0.0, 0.02, (60, 3)), axis=0)
    prices = np.full((3, 4), 10.0)
    targets = rng.uniform(0.0, 40.0, (60, 3, 4))
    returns = rng.normal(0.0, 0.01, (90, 4))

    def bar(risk: RiskManager, day: int) -> tuple[np.ndarray, np.ndarray]:
        state = risk.on_bar(equity_path[day], turbulence=float(day))
        review = risk.review(
            targets[day], np.zeros((3, 4)), prices, equity_path[day], returns[day : day + 30]
        )
        return state.copy(), review.approved

    for day in range(30):
        bar(original, day)
    original.transitions()
    original.on_bar(equity_path[30] * 0.5)  # leaves a transition unreported in the log

    text = dumps("risk", 1, original.to_dict())
    restored = RiskManager.from_dict(loads(text, "risk", 1, "test"))
    assert dumps("risk", 1, restored.to_dict()) == text  # same floats (NaNs included), dtypes and log
    for day in range(31, 60):
        (state_a, approved_a), (state_b, approved_b) = bar(original, day), bar(restored, day)
        np.testing.assert_array_equal(state_a, state_b)
        np.testing.assert_array_equal(approved_a, approved_b)
    assert restored.transitions() == original.transitions()


def test_a_manager_state_of_other_sizes_is_refused() -> None:
    state = RiskManager(RiskLimits(), 2, 3).to_dict()
    state["arrays"]["peak_equity"] = np.zeros(5)
    with pytest.raises(ValueError, match=r"peak_equity is float64\(5,\), expected float64\(2,\)"):
        RiskManager.from_dict(state)
    with pytest.raises(ValueError, match="limits must be RiskLimits"):
        RiskManager.from_dict({**state, "limits": {"max_weight": 0.2}})
