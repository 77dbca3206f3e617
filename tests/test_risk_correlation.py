"""Correlation-aware risk: the Ledoit-Wolf covariance, sector and correlation-cluster exposure caps and the
marginal risk-contribution cap of the shared risk manager, on hand-built cases, on real Dow-30 returns (no
lookahead) and as Hypothesis properties; with the new limits unset every result is what it was."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sklearn.covariance import ledoit_wolf

from tests.test_risk import Scenario, check_review, manager, only, optional, risk_limits
from trading_core.market.arrays import MarketArrays
from trading_core.market.limits import RiskLimits, TradingState
from trading_core.market.measures import (
    asset_covariance,
    correlation_clusters,
    correlation_of,
    group_gross_exposure,
    normal_quantile,
    portfolio_volatility,
    risk_contributions,
)
from trading_core.market.risk import MIN_VAR_ROWS, RULES, RiskManager
from trading_core.market.simulator import PortfolioSimulator, SimulationConfig
from trading_core.runtime.stored_json import dumps, loads

SECTORS = ("Tech", "Tech", "Energy", "Health")


def correlated_window(seed: int = 1, rows: int = 60) -> np.ndarray:
    """Assets 0 and 1 move together, 2 alone, 3 alone with three times the volatility."""
    rng = np.random.default_rng(seed)
    common = rng.normal(0.0, 0.01, (rows, 1))
    return np.hstack(
        [
            common + rng.normal(0.0, 0.002, (rows, 2)),
            rng.normal(0.0, 0.01, (rows, 1)),
            rng.normal(0.0, 0.03, (rows, 1)),
        ]
    )


def review_one(limits: RiskLimits, target, window=None, sectors=SECTORS, holdings=None, cash=1000.0):
    prices = np.array([[10.0, 20.0, 30.0, 40.0]])
    holdings = np.zeros((1, 4)) if holdings is None else np.asarray(holdings, dtype=np.float64)
    cash = np.array([cash])
    risk = RiskManager(limits, 1, 4, sectors=sectors)
    risk.reset(cash + (holdings * prices).sum(axis=1))
    return risk.review(np.asarray(target, dtype=np.float64), holdings, prices, cash, window), prices


# ------------------------------------------------------------------------------------------------ measures


def test_ledoit_wolf_covariance_is_sklearns_and_sample_is_numpys() -> None:
    window = correlated_window()
    np.testing.assert_array_equal(asset_covariance(window, "ledoit_wolf"), ledoit_wolf(window)[0])
    np.testing.assert_allclose(asset_covariance(window, "sample"), np.cov(window, rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError, match="covariance method"):
        asset_covariance(window, "shrunk")


def test_correlation_clusters_link_only_assets_correlated_above_the_threshold() -> None:
    corr = correlation_of(np.cov(correlated_window(), rowvar=False))
    assert corr[0, 1] > 0.9 and abs(corr[0, 2]) < 0.3
    labels = correlation_clusters(corr, 0.7)
    assert labels[0] == labels[1] and len(set(labels.tolist())) == 3
    assert (
        len(set(correlation_clusters(corr, -0.99).tolist())) == 1
    )  # everything links at a negative threshold
    # A riskless asset is correlated with nothing; one asset is one cluster.
    cov = np.diag([1e-4, 0.0])
    np.testing.assert_array_equal(correlation_of(cov), np.eye(2))
    assert correlation_clusters(np.ones((1, 1)), 0.7).tolist() == [0]


def test_risk_contributions_sum_to_one_and_match_the_definition() -> None:
    cov = np.cov(correlated_window(), rowvar=False)
    weights = np.array([[0.3, 0.2, -0.1, 0.1], [0.0, 0.0, 0.0, 0.0]])
    shares = risk_contributions(weights, cov)
    variance = weights[0] @ cov @ weights[0]
    np.testing.assert_allclose(shares[0], weights[0] * (cov @ weights[0]) / variance, rtol=1e-12)
    assert shares[0].sum() == pytest.approx(1.0, abs=1e-12) and shares[1].tolist() == [0.0] * 4


# ------------------------------------------------------------------------------------------------ rules


def test_sector_exposure_scales_the_sector_and_leaves_the_others() -> None:
    review, prices = review_one(only(max_sector_exposure=0.4), [[30.0, 15.0, 5.0, 5.0]])
    np.testing.assert_allclose(review.approved, [[20.0, 10.0, 5.0, 5.0]], rtol=1e-12)
    tech = np.abs(review.approved[0, :2] * prices[0, :2]).sum() / 1000.0
    assert tech == pytest.approx(0.4, rel=1e-12)
    first, second = review.interventions(4)
    assert (first.rule, first.asset, first.requested, second.asset) == ("sector_exposure", 0, 30.0, 1)
    assert "sector 'Tech'" in first.reason and "60.00%" in first.reason and "40.00%" in first.reason


def test_a_sector_limit_without_sector_labels_is_refused_when_the_manager_is_built() -> None:
    with pytest.raises(
        ValueError, match="max_sector_exposure is set but the market carries no sector labels"
    ):
        RiskManager(only(max_sector_exposure=0.3), 1, 4)
    with pytest.raises(ValueError, match=r"sectors must hold one label per asset \(4\), got 2"):
        RiskManager(only(), 1, 4, sectors=("Tech", "Energy"))


def test_cluster_exposure_caps_correlated_assets_together_from_the_trailing_window() -> None:
    limits = only(max_cluster_exposure=0.35, cluster_correlation=0.7)
    target = [[20.0, 10.0, 10.0, 2.0]]  # assets 0+1: 40% of equity, asset 2: 30%, asset 3: 8%
    review, prices = review_one(limits, target, correlated_window())
    np.testing.assert_allclose(review.approved, [[17.5, 8.75, 10.0, 2.0]], rtol=1e-12)
    [first, second] = review.interventions(0)
    assert first.rule == "cluster_exposure" and "assets 0, 1" in first.reason and "40.00%" in first.reason
    assert "mean pairwise correlation 0.9" in first.reason and "over 60 bars" in first.reason
    # Too short a window gives no correlation estimate: the rule is skipped, as VaR is.
    short, _ = review_one(limits, target, correlated_window()[: MIN_VAR_ROWS - 1])
    np.testing.assert_array_equal(short.approved, target)


def test_risk_contribution_shrinks_the_dominant_asset_to_the_cap() -> None:
    window = correlated_window()
    review, prices = review_one(only(max_risk_contribution=0.5), [[5.0, 5.0, 5.0, 5.0]], window)
    weights = review.approved * prices / 1000.0
    shares = risk_contributions(weights, np.cov(window, rowvar=False))[0]
    assert shares.max() == pytest.approx(0.5, rel=1e-9) and shares.argmax() == 3
    np.testing.assert_array_equal(review.approved[0, :3], [5.0, 5.0, 5.0])  # only the offender moved
    [change] = review.interventions(0)
    assert change.rule == "risk_contribution" and change.asset == 3 and change.approved < 5.0
    assert "max_risk_contribution 50.00%" in change.reason and "-> 50.00%" in change.reason


def test_an_infeasible_contribution_cap_drops_the_offenders_and_says_so() -> None:
    # Two positively correlated longs cannot each carry at most 30% of the variance: the book is flattened.
    window = correlated_window()
    review, _ = review_one(only(max_risk_contribution=0.3), [[5.0, 5.0, 0.0, 0.0]], window)
    np.testing.assert_array_equal(review.approved, np.zeros((1, 4)))
    reasons = [change.reason for change in review.interventions(0)]
    assert len(reasons) == 2 and all("dropped" in reason for reason in reasons)


def test_final_scale_repairs_a_contribution_the_cash_rule_broke() -> None:
    # Holding asset 3 and buying the diversifiers meets the cap; too little cash cuts the buys and asset 3's
    # share rises past the cap again: the rule runs again after the cash rule, and the cash floor still holds.
    window = correlated_window()
    # Asset 3 carries 91.6% of the requested book's variance, 95.6% once the buys are cut to the cash.
    limits = only(max_risk_contribution=0.93, cost_buffer=0.01)
    holdings = [[0.0, 0.0, 0.0, 12.5]]
    review, prices = review_one(limits, [[20.0, 10.0, 10.0, 12.5]], window, holdings=holdings, cash=500.0)
    approved = review.approved
    equity = 500.0 + 12.5 * 40.0
    order = approved - np.asarray(holdings)
    cash_after = 500.0 - (order * prices).sum() - 0.01 * (np.maximum(order, 0.0) * prices).sum()
    assert cash_after >= -1e-9
    shares = risk_contributions(approved * prices / equity, np.cov(window, rowvar=False))
    assert shares.max() <= 0.93 * (1 + 1e-12)
    rules = [change.rule for change in review.interventions(0)]
    assert "cash" in rules and rules.count("risk_contribution") >= 1
    assert any("after the buy-only cash rule" in change.reason for change in review.interventions(0))


def test_ledoit_wolf_parametric_var_scales_to_the_limit_under_the_shrunk_covariance() -> None:
    window = correlated_window()
    target = [[20.0, 10.0, 10.0, 5.0]]
    limits = only(var_limit=0.01, var_method="parametric", covariance="ledoit_wolf")
    review, prices = review_one(limits, target, window)
    weights = review.approved * prices / 1000.0
    var = normal_quantile(0.95) * portfolio_volatility(weights, ledoit_wolf(window)[0])
    assert var[0] == pytest.approx(0.01, rel=1e-12)
    sample, _ = review_one(dataclasses.replace(limits, covariance="sample"), target, window)
    assert not np.allclose(sample.approved, review.approved)


def test_new_limits_validate_their_arguments() -> None:
    with pytest.raises(ValueError, match="covariance must be"):
        RiskLimits(covariance="oas")
    with pytest.raises(ValueError, match="cluster_correlation"):
        RiskLimits(cluster_correlation=1.0)
    with pytest.raises(ValueError, match="max_risk_contribution"):
        RiskLimits(max_risk_contribution=1.5)
    with pytest.raises(ValueError, match="max_sector_exposure"):
        RiskLimits(max_sector_exposure=-0.1)
    off = RiskLimits.disabled()
    assert (off.max_sector_exposure, off.max_cluster_exposure, off.max_risk_contribution) == (
        None,
        None,
        None,
    )


# ------------------------------------------------------------------------------------------------ storage


def test_a_manager_state_saved_before_sector_labels_existed_still_loads() -> None:
    old_state = RiskManager(RiskLimits(), 2, 4).to_dict()
    del old_state["sectors"]
    restored = RiskManager.from_dict(old_state)
    assert restored.sectors is None and restored.limits == RiskLimits()
    with_sectors = RiskManager(only(max_sector_exposure=0.5), 2, 4, sectors=SECTORS)
    again = RiskManager.from_dict(loads(dumps("risk", 1, with_sectors.to_dict()), "risk", 1, "test"))
    assert again.sectors == SECTORS and again.limits == with_sectors.limits


def test_a_limits_document_without_the_new_fields_loads_with_their_defaults() -> None:
    import json

    document = json.loads(dumps("risk", 1, RiskLimits(var_limit=0.03)))
    fields = document["data"]["fields"]
    for name in (
        "covariance",
        "max_sector_exposure",
        "max_cluster_exposure",
        "cluster_correlation",
        "max_risk_contribution",
    ):
        del fields[name]
    assert loads(json.dumps(document), "risk", 1, "test") == RiskLimits(var_limit=0.03)


# ------------------------------------------------------------------------------------------------ real data


@pytest.fixture(scope="module")
def slice_market(slice_bars) -> MarketArrays:
    market = MarketArrays.from_features(slice_bars)
    labels = {"AAPL": "Tech", "MSFT": "Tech", "JPM": "Financials", "KO": "Staples"}
    return dataclasses.replace(market, sectors=tuple(labels[t] for t in market.tickers))


CORRELATION_LIMITS = RiskLimits(
    max_weight=0.5,
    max_sector_exposure=0.45,
    max_cluster_exposure=0.3,
    cluster_correlation=0.3,
    max_risk_contribution=0.27,
    covariance="ledoit_wolf",
    var_method="parametric",
)


def approved_path(market: MarketArrays, steps: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Approved targets and rule hits of an all-in equal-weight book, decided at each of ``steps`` closes."""
    simulator = PortfolioSimulator(market, SimulationConfig(risk=CORRELATION_LIMITS), n_envs=1)
    simulator.reset()
    approved, hits = [], []
    for _ in range(steps):
        target = simulator.equity()[:, None] / market.n_assets / simulator.prices[None, :]
        outcome = simulator.step(target)
        approved.append(simulator.holdings.copy())
        hits.append(outcome.review.rule_hits.copy())
    return approved, hits


def test_no_lookahead_decisions_up_to_t_equal_on_truncated_and_full_data(slice_market) -> None:
    """The clusters, contributions and VaR at each close read only returns up to that close."""
    steps, cut = 140, 120
    full = slice_market.between(slice_market.dates[0], slice_market.dates[steps])
    truncated = slice_market.between(slice_market.dates[0], slice_market.dates[cut])
    full_approved, full_hits = approved_path(full, steps)
    short_approved, short_hits = approved_path(truncated, cut)
    for day in range(cut):
        np.testing.assert_array_equal(short_approved[day], full_approved[day])
        np.testing.assert_array_equal(short_hits[day], full_hits[day])
    bound = np.array(full_hits).any(axis=(0, 1))
    assert {"sector_exposure", "cluster_exposure", "risk_contribution"} <= {
        RULES[i] for i in np.flatnonzero(bound)
    }


def test_the_simulator_hands_the_markets_sector_labels_to_the_manager(slice_market) -> None:
    simulator = PortfolioSimulator(slice_market, SimulationConfig(risk=CORRELATION_LIMITS))
    assert simulator.risk.sectors == slice_market.sectors
    unlabelled = dataclasses.replace(slice_market, sectors=None)
    with pytest.raises(ValueError, match="no sector labels"):
        PortfolioSimulator(unlabelled, SimulationConfig(risk=CORRELATION_LIMITS))


# ------------------------------------------------------------------------------------------------ defaults


def default_reviews_digest(make_manager=manager, rules: tuple[str, ...] = RULES) -> str:
    """Approved targets (to 10 significant digits), rule hits and reasons of seeded reviews under limits that
    leave every new limit unset."""
    rng = np.random.default_rng(2024)
    digest = hashlib.sha256()
    configurations = (
        RiskLimits(),
        RiskLimits(var_method="parametric", max_weight=0.3),
        RiskLimits(allow_short=True, max_margin=0.5, max_gross_exposure=1.5, var_limit=0.01),
    )
    for limits in configurations:
        for n_assets in (1, 3, 6):
            shape = (4, n_assets)
            prices = rng.lognormal(3.0, 1.0, shape)
            holdings = rng.uniform(0.0, 30.0, shape)
            cash = rng.uniform(0.0, 2000.0, 4)
            risk = make_manager(limits, cash, holdings, prices)
            for _ in range(6):
                equity = cash + (holdings * prices).sum(axis=1)
                low = -0.6 if limits.allow_short else -0.1
                target = rng.uniform(low, 1.0, shape) * 2.5 / n_assets * equity[:, None] / prices
                window = rng.standard_t(3, (60, n_assets)) * 0.02 + rng.normal(0, 0.01, (60, 1))
                review = risk.review(target, holdings, prices, cash, window)
                digest.update(np.array([float(f"{x:.10g}") for x in review.approved.ravel()]).tobytes())
                old_rules = [rules.index(name) for name in PRE_CORRELATION_RULES]
                digest.update(review.rule_hits[:, old_rules].tobytes())
                digest.update("|".join(change.reason for change in review.interventions(0)).encode())
                order = review.approved - holdings
                cash = (
                    cash
                    - (order * prices).sum(axis=1)
                    - limits.cost_buffer * (np.maximum(order, 0) * prices).sum(axis=1)
                )
                holdings = review.approved
                prices = prices * (1.0 + rng.normal(0.0, 0.04, shape))
                risk.on_bar(cash + (holdings * prices).sum(axis=1))
    return digest.hexdigest()


PRE_CORRELATION_RULES = (
    "halted",
    "reducing",
    "no_equity",
    "no_short",
    "max_weight",
    "exposure_scaling",
    "gross_exposure",
    "net_exposure",
    "var_limit",
    "cash",
    "final_scale",
    "halt_liquidation",
)
# Computed with the risk manager as it was before the correlation-aware limits existed.
DEFAULT_REVIEWS_DIGEST = "f4a88124d5f5524cd3304a10c1170c145847e0951a059ea48f8ba597de2ca094"


def test_with_the_new_limits_unset_every_review_is_what_it_was() -> None:
    assert default_reviews_digest() == DEFAULT_REVIEWS_DIGEST


# ------------------------------------------------------------------------------------------------ properties


@st.composite
def correlation_scenarios(draw) -> tuple[Scenario, tuple[str, ...]]:
    steps = draw(st.integers(1, 5))
    n_assets = draw(st.integers(1, 6))
    base = draw(risk_limits())
    limits = dataclasses.replace(
        base,
        covariance=draw(st.sampled_from(["sample", "ledoit_wolf"])),
        max_sector_exposure=draw(optional(st.floats(0.05, 1.5))),
        max_cluster_exposure=draw(optional(st.floats(0.05, 1.5))),
        cluster_correlation=draw(st.sampled_from([0.0, 0.3, 0.7, 0.9])),
        max_risk_contribution=draw(optional(st.floats(0.1, 1.0))),
    )
    scenario = Scenario(
        limits=limits,
        n_envs=draw(st.integers(1, 4)),
        n_assets=n_assets,
        steps=steps,
        zero_price_share=draw(st.sampled_from([0.0, 0.0, 0.2])),
        move_vol=draw(st.sampled_from([0.002, 0.02, 0.08])),
        window_rows=draw(st.lists(st.sampled_from([0, 10, 20, 35, 60]), min_size=steps, max_size=steps)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    sectors = tuple(draw(st.lists(st.sampled_from("ABC"), min_size=n_assets, max_size=n_assets)))
    return scenario, sectors


def check_correlation_limits(limits, sectors, state, review, target, holdings, prices, cash, window) -> None:
    """The new limits hold for every approved portfolio that limits apply to, and every change has a reason."""
    approved = review.approved
    equity = cash + (holdings * prices).sum(axis=1)
    changed_envs = {int(env) for env in np.flatnonzero((approved != target).any(axis=1))}
    explained = {change.env for change in review.interventions(0) if change.reason}
    assert changed_envs <= explained
    for change in review.interventions(0):
        if change.rule in ("sector_exposure", "cluster_exposure", "risk_contribution"):
            assert change.asset is not None and any(ch.isdigit() for ch in change.reason)
    usable = window is not None and len(window) >= MIN_VAR_ROWS
    cov = asset_covariance(window, limits.covariance) if usable else None
    for env in range(len(approved)):
        if state[env] == TradingState.HALTED or not equity[env] > 0.0:
            continue
        weights = approved[env] * prices[env] / equity[env]
        if limits.max_sector_exposure is not None:
            codes = np.unique(np.asarray(sectors), return_inverse=True)[1]
            by_sector = group_gross_exposure(weights[None], codes, int(codes.max()) + 1)
            assert by_sector.max() <= limits.max_sector_exposure * (1 + 1e-12)
        if cov is None:
            continue
        if limits.max_cluster_exposure is not None:
            labels = correlation_clusters(correlation_of(cov), limits.cluster_correlation)
            clusters = group_gross_exposure(weights[None], labels, int(labels.max()) + 1)
            assert clusters.max() <= limits.max_cluster_exposure * (1 + 1e-12)
        if limits.max_risk_contribution is not None:
            shares = risk_contributions(weights[None], cov)
            assert shares.max() <= limits.max_risk_contribution * (1 + 1e-12)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(correlation_scenarios())
def test_no_approved_portfolio_breaches_a_correlation_limit(drawn) -> None:
    scenario, sectors = drawn
    limits, rng = scenario.limits, np.random.default_rng(scenario.seed)
    prices, holdings, cash = scenario.start(rng)
    risk = RiskManager(limits, scenario.n_envs, scenario.n_assets, sectors=sectors)
    risk.reset(cash + (holdings * prices).sum(axis=1))
    pending = np.zeros(scenario.n_envs, dtype=bool)
    for step in range(scenario.steps):
        target = scenario.target(rng, holdings, prices, cash + (holdings * prices).sum(axis=1))
        window = scenario.returns_window(rng, step)
        state, cap = risk.state.copy(), risk.exposure_cap
        review = risk.review(target, holdings, prices, cash, window)
        check_review(limits, state, pending, cap, review, target, holdings, prices, cash, window)
        check_correlation_limits(limits, sectors, state, review, target, holdings, prices, cash, window)
        for rule in np.asarray(RULES)[review.rule_hits.any(axis=0)]:
            event(f"rule hit: {rule}")
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


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_assets=st.integers(2, 30),
    cap=st.floats(0.02, 1.0),
    long_only=st.booleans(),
)
def test_the_contribution_cap_always_ends_within_the_cap_by_shrinking_only(
    seed, n_assets, cap, long_only
) -> None:
    """Feasible or not, many assets or few: the reduction ends, only shrinks positions, and meets the cap."""
    rng = np.random.default_rng(seed)
    window = rng.normal(0.0, 0.01, (60, 1)) * rng.uniform(-0.5, 1.5, n_assets) + rng.standard_t(
        3, (60, n_assets)
    ) * 0.01 * rng.uniform(0.2, 1.0, n_assets)
    prices = rng.lognormal(3.0, 1.0, (1, n_assets))
    weights = (
        rng.dirichlet(np.ones(n_assets)) if long_only else rng.uniform(-1.0, 1.0, n_assets) * 3 / n_assets
    )
    target = weights[None] * 1e5 / prices
    limits = only(max_risk_contribution=cap, allow_short=not long_only, max_margin=np.inf)
    risk = manager(limits, np.array([1e5]), np.zeros((1, n_assets)), prices)
    review = risk.review(target, np.zeros((1, n_assets)), prices, np.array([1e5]), window)
    approved = review.approved
    assert np.all(np.abs(approved) <= np.abs(target)) and np.all(approved * target >= 0.0)
    shares = risk_contributions(approved * prices / 1e5, np.cov(window, rowvar=False))
    assert shares.max() <= cap * (1 + 1e-9)
    event("flattened" if not approved.any() else "kept a book")
