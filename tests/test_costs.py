"""Transaction costs: commission schedules, spread estimators, trailing statistics, impact and the cost model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading_core.market.costs import (
    BROKER_PRESETS,
    BpsCommission,
    CommissionModel,
    CostModel,
    Execution,
    ImpactModel,
    LinearImpact,
    NoImpact,
    PerOrderCommission,
    PerShareCommission,
    ProportionalCommission,
    SquareRootImpact,
    ZeroCommission,
    commission_model,
    corwin_schultz_half_spread,
    fixed_half_spread,
    quote_half_spread,
    trailing_adv,
    trailing_mean,
    trailing_volatility,
)
from trading_core.market.execution import ExecutionConfig, FillBar, execute_orders

# ------------------------------------------------------------------------------------------------ commissions


@pytest.mark.parametrize(
    ("model", "shares", "price", "expected"),
    [
        (ProportionalCommission(0.001), [0, 10, 100], [50.0, 50.0, 12.5], [0.0, 0.5, 1.25]),
        (BpsCommission(5.0), [0, 100, 3], [20.0, 20.0, 1000.0], [0.0, 1.0, 1.5]),
        # IBKR fixed: 0.005/share, $1 minimum, capped at 1 % of value (the cap beats the minimum).
        (
            PerShareCommission(0.005, minimum=1.0, maximum_pct=0.01),
            [0, 100, 1000, 300, 1_000_000],
            [50.0, 50.0, 50.0, 0.2, 0.3],
            [0.0, 1.0, 5.0, 0.6, 3000.0],
        ),
        # IBKR tiered: 0.0035/share, $0.35 minimum, 1 % cap.
        (
            PerShareCommission(0.0035, minimum=0.35, maximum_pct=0.01),
            [0, 50, 10_000, 100],
            [100.0, 100.0, 30.0, 0.1],
            [0.0, 0.35, 35.0, 0.1],
        ),
        (PerShareCommission(0.01), [0, 7, 250], [5.0, 5.0, 5.0], [0.0, 0.07, 2.5]),
        (PerShareCommission(0.01, minimum=2.0), [0, 7, 250], [5.0, 5.0, 5.0], [0.0, 2.0, 2.5]),
        (PerOrderCommission(4.95), [0, 1, 1000], [10.0, 10.0, 10.0], [0.0, 4.95, 4.95]),
        (ZeroCommission(), [0, 1, 1000], [10.0, 10.0, 10.0], [0.0, 0.0, 0.0]),
    ],
)
def test_commission_models_against_hand_computed_fees(model, shares, price, expected):
    fee = model(np.array(shares, dtype=float), np.array(price))
    np.testing.assert_allclose(fee, expected, rtol=1e-12, atol=0.0)
    assert fee[0] == 0.0
    assert isinstance(model, CommissionModel)


def test_commissions_broadcast_over_envs_and_assets():
    shares = np.array([[0.0, 100.0, 1000.0], [10.0, 0.0, 5.0]])
    price = np.array([50.0, 20.0, 0.5])
    for model in BROKER_PRESETS.values():
        fee = model(shares, price)
        assert fee.shape == (2, 3)
        assert np.all(fee[shares == 0] == 0.0)
        assert np.all(fee >= 0.0)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: ProportionalCommission(-0.001),
        lambda: BpsCommission(float("nan")),
        lambda: PerShareCommission(0.005, minimum=-1.0),
        lambda: PerShareCommission(0.005, maximum_pct=-0.01),
        lambda: PerOrderCommission(-1.0),
    ],
)
def test_negative_commission_parameters_are_rejected(factory):
    with pytest.raises(ValueError, match="non-negative"):
        factory()


def test_broker_presets():
    assert {
        "zero",
        "alpaca",
        "interactive_brokers_fixed",
        "interactive_brokers_tiered",
        "finrl",
        "flat_retail",
        "bps_5",
    } <= set(BROKER_PRESETS)
    assert commission_model("finrl") == ProportionalCommission(0.001)
    assert commission_model("interactive_brokers_fixed") == PerShareCommission(0.005, 1.0, 0.01)
    assert commission_model("interactive_brokers_tiered") == PerShareCommission(0.0035, 0.35, 0.01)
    assert commission_model("flat_retail") == PerOrderCommission(4.95)
    assert commission_model("bps_5") == BpsCommission(5.0)
    shares, price = np.array([0.0, 100.0]), np.array([10.0, 10.0])
    for name in ("zero", "alpaca"):
        np.testing.assert_array_equal(commission_model(name)(shares, price), [0.0, 0.0])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="robinhood") as error:
        commission_model("robinhood")
    for name in BROKER_PRESETS:
        assert name in str(error.value)


# --------------------------------------------------------------------------------------------- half-spreads


def cs_two_day(h0: float, l0: float, h1: float, l1: float) -> float:
    """The Corwin-Schultz two-day spread, written out from the paper's equations with scalar math."""
    k = 3 - 2 * math.sqrt(2)
    beta = math.log(h0 / l0) ** 2 + math.log(h1 / l1) ** 2
    gamma = math.log(max(h0, h1) / min(l0, l1)) ** 2
    alpha = (math.sqrt(2 * beta) - math.sqrt(beta)) / k - math.sqrt(gamma / k)
    return 2 * (math.exp(alpha) - 1) / (1 + math.exp(alpha))


def test_fixed_and_quote_half_spreads():
    np.testing.assert_array_equal(fixed_half_spread((3, 2), 10.0), np.full((3, 2), 5e-4))
    bid = np.array([[99.0, 10.0, 10.0, np.nan]])
    ask = np.array([[101.0, 10.02, 9.99, 10.0]])
    half = quote_half_spread(bid, ask)
    np.testing.assert_allclose(half[0, :3], [0.01, 0.02 / 20.02, 0.0])
    assert np.isnan(half[0, 3])


def test_corwin_schultz_on_a_hand_built_three_bar_example():
    high = np.array([[10.20], [10.30], [10.25]])
    low = np.array([[9.90], [10.00], [9.95]])
    s1 = cs_two_day(10.20, 9.90, 10.30, 10.00)
    s2 = cs_two_day(10.30, 10.00, 10.25, 9.95)
    assert s1 > 0 and s2 > 0  # the example is built to give positive estimates

    half = corwin_schultz_half_spread(high, low, window=20, fallback_bps=12.0)
    np.testing.assert_allclose(half[:, 0], [6e-4, s1 / 2, (s1 + s2) / 4], rtol=1e-12)
    # A window of one keeps only the latest two-day estimate.
    one = corwin_schultz_half_spread(high, low, window=1, fallback_bps=12.0)
    np.testing.assert_allclose(one[:, 0], [6e-4, s1 / 2, s2 / 2], rtol=1e-12)


def test_corwin_schultz_sets_negative_estimates_to_zero():
    # A quiet bar after a big gap: the two-day range dwarfs the one-day ranges, so alpha < 0.
    high = np.array([[10.10], [11.05]])
    low = np.array([[10.00], [11.00]])
    assert cs_two_day(10.10, 10.00, 11.05, 11.00) < 0
    half = corwin_schultz_half_spread(high, low, window=5)
    assert half[1, 0] == 0.0
    # Clipped, not dropped: the zero still counts in the trailing mean.
    high3 = np.array([[10.10], [11.05], [11.20]])
    low3 = np.array([[10.00], [11.00], [10.90]])
    s2 = cs_two_day(11.05, 11.00, 11.20, 10.90)
    assert s2 > 0
    half3 = corwin_schultz_half_spread(high3, low3, window=5)
    np.testing.assert_allclose(half3[2, 0], (0.0 + s2) / 4, rtol=1e-12)


def test_corwin_schultz_skips_bad_prices_and_never_returns_nan():
    high = np.array([[10.2, 5.0], [np.nan, 5.1], [10.3, 5.2], [10.4, 5.1]])
    low = np.array([[10.0, 4.9], [9.9, 0.0], [10.1, 5.0], [10.2, 4.95]])
    half = corwin_schultz_half_spread(high, low, window=3, fallback_bps=8.0)
    assert np.isfinite(half).all() and (half >= 0).all()
    # Rows 1 and 2 of the first column only have estimates that touch the NaN high: fallback.
    np.testing.assert_array_equal(half[:3, 0], [4e-4, 4e-4, 4e-4])
    np.testing.assert_allclose(half[3, 0], max(cs_two_day(10.3, 10.1, 10.4, 10.2), 0.0) / 2, rtol=1e-12)


def random_bars(rng: np.random.Generator, t: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.015, size=(t, n)), axis=0))
    high = close * np.exp(np.abs(rng.normal(0.0, 0.01, size=(t, n))))
    low = close * np.exp(-np.abs(rng.normal(0.0, 0.01, size=(t, n))))
    return high, low, close


@pytest.mark.parametrize("seed", range(5))
def test_estimators_are_causal(seed):
    rng = np.random.default_rng(seed)
    high, low, close = random_bars(rng, 60, 4)
    volume = rng.lognormal(13.0, 0.5, size=(60, 4))
    cut = int(rng.integers(1, 59))
    estimators = {
        "corwin_schultz": lambda h, lo, c, v: corwin_schultz_half_spread(h, lo, window=10),
        "adv": lambda h, lo, c, v: trailing_adv(v, 10),
        "volatility": lambda h, lo, c, v: trailing_volatility(c, 10),
        "mean": lambda h, lo, c, v: trailing_mean(c, 7),
    }
    changed = [x.copy() for x in (high, low, close, volume)]
    later = slice(cut + 1, None)
    changed[0][later] *= rng.uniform(1.0, 1.5, size=changed[0][later].shape)
    changed[1][later] *= rng.uniform(0.5, 1.0, size=changed[1][later].shape)
    changed[2][later] *= rng.uniform(0.5, 1.5, size=changed[2][later].shape)
    changed[3][later] = rng.lognormal(15.0, 1.0, size=changed[3][later].shape)
    for name, estimator in estimators.items():
        before = estimator(high, low, close, volume)
        after = estimator(*changed)
        np.testing.assert_array_equal(before[: cut + 1], after[: cut + 1], err_msg=name)
        assert not np.array_equal(before[cut + 1 :], after[cut + 1 :]), name


# ----------------------------------------------------------------------------------------- trailing statistics


@pytest.mark.parametrize("window", [1, 3, 20, 200])
def test_trailing_mean_matches_pandas_rolling(window):
    rng = np.random.default_rng(window)
    values = rng.normal(100.0, 30.0, size=(120, 5))
    values[rng.random(values.shape) < 0.1] = np.nan
    expected = pd.DataFrame(values).rolling(window, min_periods=1).mean().to_numpy()
    result = trailing_mean(values, window)
    has_value = ~np.isnan(expected)
    np.testing.assert_allclose(result[has_value], expected[has_value], rtol=1e-10)
    # Where pandas has nothing to average, the documented fallback replaces NaN.
    assert (result[~has_value] == 0.0).all()
    assert trailing_mean(np.full((3, 2), np.nan), 2, empty=-1.0).tolist() == [[-1.0, -1.0]] * 3


def test_trailing_mean_works_on_any_trailing_shape():
    values = np.arange(24, dtype=float).reshape(4, 3, 2)
    expected = pd.DataFrame(values.reshape(4, 6)).rolling(2, min_periods=1).mean().to_numpy().reshape(4, 3, 2)
    np.testing.assert_allclose(trailing_mean(values, 2), expected)
    with pytest.raises(ValueError, match="window"):
        trailing_mean(values, 0)


def test_trailing_adv_is_the_trailing_volume_average():
    volume = np.array([[100.0, 0.0], [200.0, 0.0], [600.0, np.nan], [1000.0, 50.0]])
    np.testing.assert_allclose(trailing_adv(volume, 2), [[100, 0], [150, 0], [400, 0], [800, 50]])


def test_trailing_volatility_matches_pandas_sample_std():
    rng = np.random.default_rng(7)
    _, _, close = random_bars(rng, 80, 3)
    sigma = trailing_volatility(close, 20)
    expected = pd.DataFrame(close).pct_change().rolling(20, min_periods=2).std().to_numpy()
    np.testing.assert_allclose(sigma[2:], expected[2:], rtol=1e-9)
    # Fewer than two returns: the documented fallback, never a value borrowed from later rows.
    np.testing.assert_array_equal(sigma[:2], 0.0)
    np.testing.assert_array_equal(trailing_volatility(close, 20, fallback=0.02)[:2], 0.02)
    # A constant price has exactly zero volatility (no negative-variance rounding leaking through sqrt).
    assert (trailing_volatility(np.full((30, 2), 17.3), 10) == 0.0).all()


def test_trailing_volatility_skips_returns_touching_missing_closes():
    close = np.array([[10.0], [11.0], [np.nan], [12.1], [13.31], [0.0], [14.0]])
    sigma = trailing_volatility(close, 10)
    assert np.isfinite(sigma).all()
    # Returns available: row 1 (+10 %), row 4 (+10 %); the rest touch the NaN or zero close.
    np.testing.assert_array_equal(sigma[:4, 0], 0.0)
    np.testing.assert_allclose(sigma[4:, 0], 0.0, atol=1e-15)


# ---------------------------------------------------------------------------------------------------- impact


def test_impact_formulas():
    participation = np.array([0.0, 0.04, 0.25])
    sigma = np.array([0.02, 0.02, 0.03])
    linear = LinearImpact(alpha=0.1, beta=0.05)
    np.testing.assert_allclose(
        linear.temporary(participation, sigma), [0.0, 0.1 * 0.04 * 0.02, 0.1 * 0.25 * 0.03]
    )
    np.testing.assert_allclose(linear.permanent(participation), [0.0, 0.002, 0.0125])
    root = SquareRootImpact(eta=0.5, beta=0.1)
    np.testing.assert_allclose(
        root.temporary(participation, sigma), [0.0, 0.5 * 0.02 * 0.2, 0.5 * 0.03 * 0.5]
    )
    np.testing.assert_allclose(root.permanent(participation), [0.0, 0.004, 0.025])
    assert LinearImpact() == LinearImpact(0.1, 0.05)
    assert SquareRootImpact() == SquareRootImpact(1.0, 0.0)
    np.testing.assert_array_equal(NoImpact().temporary(participation, sigma), 0.0)
    np.testing.assert_array_equal(NoImpact().permanent(participation), 0.0)
    for model in (linear, root, NoImpact()):
        assert isinstance(model, ImpactModel)


# ------------------------------------------------------------------------------------------------ cost model


def test_execute_against_hand_computed_fills():
    model = CostModel(ProportionalCommission(0.001), LinearImpact(alpha=0.1, beta=0.05))
    execution = model.execute(
        shares=np.array([[100.0, -200.0, 0.0]]),
        ref_price=np.array([[50.0, 20.0, 10.0]]),
        half_spread=0.001,
        adv=np.array([[1000.0, 2000.0, 500.0]]),
        sigma=0.02,
    )
    # Participation 0.1 on both trades: temporary 0.1 * 0.1 * 0.02, permanent 0.05 * 0.1 counted half.
    slippage = 0.001 + 0.0002 + 0.0025
    np.testing.assert_allclose(execution.fill_price, [[50 * (1 + slippage), 20 * (1 - slippage), 10.0]])
    np.testing.assert_allclose(execution.spread_cost, [[5.0, 4.0, 0.0]])
    np.testing.assert_allclose(execution.impact_cost, [[5000 * 0.0027, 4000 * 0.0027, 0.0]])
    np.testing.assert_allclose(
        execution.commission, [[0.001 * 100 * 50 * (1 + slippage), 0.001 * 200 * 20 * (1 - slippage), 0.0]]
    )
    np.testing.assert_allclose(
        execution.total_cost, execution.commission + execution.spread_cost + execution.impact_cost
    )
    assert execution.fill_price[0, 2] == 10.0
    assert execution.total_cost[0, 2] == 0.0


def test_finrl_cost_model_reproduces_finrl_cash_arithmetic():
    rng = np.random.default_rng(3)
    price = rng.uniform(5.0, 500.0, size=(4, 30))
    shares = rng.integers(-300, 300, size=(4, 30)).astype(float)
    rate = 0.001
    execution = CostModel.finrl(rate).execute(shares, price)
    assert CostModel.finrl() == CostModel(ProportionalCommission(0.001), NoImpact())
    np.testing.assert_array_equal(execution.fill_price, price)
    np.testing.assert_array_equal(execution.spread_cost, 0.0)
    np.testing.assert_array_equal(execution.impact_cost, 0.0)
    cash_change = -shares * execution.fill_price - execution.commission
    # FinRL: buy_amount = p * q * (1 + cost); sell_amount = p * q * (1 - cost).
    finrl = np.where(shares > 0, -price * shares * (1 + rate), price * -shares * (1 - rate))
    np.testing.assert_allclose(cash_change, finrl, rtol=1e-14, atol=1e-9)


def test_execute_broadcasts_market_state_over_envs():
    model = CostModel(commission_model("interactive_brokers_fixed"), SquareRootImpact(1.0, 0.1))
    shares = np.array([[10.0, -5.0, 0.0], [0.0, 300.0, -1.0]])
    execution = model.execute(shares, np.array([10.0, 20.0, 30.0]), 5e-4, np.array([1e4, 1e5, 0.0]), 0.02)
    for part in (execution.fill_price, execution.commission, execution.spread_cost, execution.impact_cost):
        assert part.shape == (2, 3)
        assert part.flags.writeable
    # The same order priced alone equals its row of the batch.
    alone = model.execute(np.array([300.0]), np.array([20.0]), 5e-4, np.array([1e5]), 0.02)
    assert alone.total_cost[0] == pytest.approx(execution.total_cost[1, 1], rel=1e-15)


def test_degenerate_adv_gives_full_or_no_participation():
    model = CostModel(ZeroCommission(), LinearImpact(alpha=0.1, beta=0.05))
    ref, sigma = np.array([100.0]), 0.02
    full = 0.1 * 1.0 * sigma + 0.05 * 1.0 / 2
    for adv in (0.0, -5.0, np.nan, np.array([0.0]), np.array([np.nan]), np.array([-np.inf])):
        execution = model.execute(np.array([10.0]), ref, 0.0, adv, sigma)
        np.testing.assert_allclose(execution.impact_cost, [10 * 100 * full], err_msg=str(adv))
    for adv in (np.inf, np.array([np.inf])):
        execution = model.execute(np.array([10.0]), ref, 0.0, adv, sigma)
        np.testing.assert_array_equal(execution.impact_cost, [0.0])
        np.testing.assert_array_equal(execution.fill_price, ref)


def test_a_sell_never_fills_below_zero():
    model = CostModel(ProportionalCommission(0.001), SquareRootImpact(eta=1.0, beta=1.0))
    execution = model.execute(np.array([-1e6, 1e6]), np.array([10.0, 10.0]), 0.01, 100.0, 0.5)
    assert execution.fill_price[0] == 0.0
    assert execution.commission[0] == 0.0
    # The seller's whole reference value is lost to spread and impact, and no more.
    assert execution.total_cost[0] == pytest.approx(1e6 * 10.0)
    assert execution.fill_price[1] > 10.0


# -------------------------------------------------------------------------------------------- property tests

MODELS = [
    CostModel(commission, impact)
    for commission in BROKER_PRESETS.values()
    for impact in (NoImpact(), LinearImpact(), SquareRootImpact(eta=1.0, beta=0.1))
]
adv_values = st.one_of(st.sampled_from([0.0, np.inf]), st.floats(1.0, 1e9))
market_state = st.fixed_dictionaries(
    {
        "ref_price": st.floats(0.01, 1e4),
        "half_spread": st.floats(0.0, 0.05),
        "adv": adv_values,
        "sigma": st.floats(0.0, 0.2),
    }
)
share_sizes = st.floats(0.0, 1e7)
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


def execute_one(model: CostModel, shares: float, state: dict) -> Execution:
    return model.execute(
        np.array([shares]),
        np.array([state["ref_price"]]),
        np.array([state["half_spread"]]),
        np.array([state["adv"]]),
        np.array([state["sigma"]]),
    )


@PROPERTY_SETTINGS
@given(model=st.sampled_from(MODELS), size=share_sizes, buy=st.booleans(), state=market_state)
def test_costs_are_non_negative_finite_and_fills_on_the_right_side(model, size, buy, state):
    shares = size if buy else -size
    execution = execute_one(model, shares, state)
    for part in (execution.commission, execution.spread_cost, execution.impact_cost, execution.fill_price):
        assert np.isfinite(part).all()
        assert (part >= 0.0).all()
    ref = state["ref_price"]
    if buy:
        assert execution.fill_price[0] >= ref
    else:
        assert execution.fill_price[0] <= ref
    # Cash against the reference value: a buy pays q ref + costs, a sell raises q ref - costs.
    cash = -shares * execution.fill_price[0] - execution.commission[0]
    scale = max(1.0, abs(shares) * ref)
    assert cash == pytest.approx(-shares * ref - execution.total_cost[0], rel=1e-9, abs=1e-12 * scale)


@PROPERTY_SETTINGS
@given(model=st.sampled_from(MODELS), state=market_state)
def test_zero_shares_cost_nothing(model, state):
    execution = execute_one(model, 0.0, state)
    assert execution.fill_price[0] == state["ref_price"]
    assert execution.commission[0] == execution.spread_cost[0] == execution.impact_cost[0] == 0.0
    assert execution.total_cost[0] == 0.0


@PROPERTY_SETTINGS
@given(
    model=st.sampled_from(MODELS),
    sizes=st.lists(share_sizes, min_size=2, max_size=2),
    buy=st.booleans(),
    state=market_state,
)
def test_total_cost_is_monotone_in_order_size(model, sizes, buy, state):
    small, large = sorted(sizes)
    sign = 1.0 if buy else -1.0
    cost_small = execute_one(model, sign * small, state).total_cost[0]
    cost_large = execute_one(model, sign * large, state).total_cost[0]
    assert cost_large >= cost_small - 1e-12 * max(1.0, abs(cost_small))


@PROPERTY_SETTINGS
@given(
    model=st.sampled_from(MODELS),
    shares=st.lists(st.floats(-1e6, 1e6), min_size=6, max_size=6),
    adv=st.sampled_from([0.0, np.inf]),
    state=market_state,
)
def test_degenerate_adv_never_produces_nan(model, shares, adv, state):
    batch = np.array(shares).reshape(2, 3)
    for adv_value in (adv, np.full((2, 3), adv)):
        execution = model.execute(batch, state["ref_price"], state["half_spread"], adv_value, state["sigma"])
        for part in (execution.fill_price, execution.total_cost):
            assert part.shape == (2, 3)
            assert np.isfinite(part).all()


# ------------------------------------------------------------------------------------------------- real data


def test_corwin_schultz_on_real_dow_bars(dow30_file):
    bars = pd.read_csv(dow30_file, usecols=["date", "tic", "high", "low"])
    tickers = ["AAPL", "MSFT", "JPM", "KO"]
    bars = bars[bars["tic"].isin(tickers)]
    high = bars.pivot(index="date", columns="tic", values="high")[tickers].to_numpy()
    low = bars.pivot(index="date", columns="tic", values="low")[tickers].to_numpy()
    half = corwin_schultz_half_spread(high, low)
    assert half.shape == high.shape and len(half) > 3000
    assert np.isfinite(half).all() and (half >= 0).all()
    # Liquid large caps: the (upward-biased, daily-bar) estimate still sits mostly below 50 bps.
    below = (half < 50e-4).mean(axis=0)
    assert (below > 0.9).all(), dict(zip(tickers, below, strict=True))
    assert (np.median(half, axis=0) > 0).all()


def test_a_cash_limited_buy_never_spends_more_than_the_cash_under_a_minimum_commission():
    """floor(cash / per-share cost of the whole order) shares pay the $1 minimum, which the whole order did
    not: 10 shares at 99.95 + $1 would cost 1000.50 of 1000 cash, so the fill is cut to 9 shares."""
    price = np.array([[99.95]])
    bar = FillBar(price, price, price, np.array([[1e9]]), np.zeros((1, 1)), np.ones((1, 1)), np.zeros((1, 1)))
    model = CostModel(commission_model("interactive_brokers_fixed"), NoImpact())
    fills = execute_orders(
        np.array([[200.0]]), np.zeros((1, 1)), np.array([1000.0]), price, bar, model, ExecutionConfig()
    )
    assert fills.shares[0, 0] == 9.0
    assert fills.commission[0, 0] == 1.0
    assert 1000.0 + fills.cash_change[0] == pytest.approx(1000.0 - 9 * 99.95 - 1.0)
