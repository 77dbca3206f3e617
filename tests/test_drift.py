"""Drift statistics: PSI on hand-computed and seeded cases, KS against scipy, performance decay on seeded returns,
and feature drift between a calm and a crisis year of real Dow-30 returns."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from trading_core.evaluation.metrics import sharpe_ratio
from trading_core.monitoring.drift import (
    FEATURE_DRIFT_COLUMNS,
    PSI_EPSILON,
    PerformanceDecay,
    feature_drift,
    performance_decay,
    population_stability_index,
)

# ------------------------------------------------------------------------------------------------ PSI


def test_psi_of_the_same_distribution_is_near_zero() -> None:
    rng = np.random.default_rng(7)
    reference, current = rng.normal(size=20_000), rng.normal(size=20_000)
    assert 0.0 <= population_stability_index(reference, current) < 0.01
    assert population_stability_index(reference, reference) == pytest.approx(0.0, abs=1e-12)


def test_psi_grows_with_the_shift() -> None:
    rng = np.random.default_rng(11)
    reference = rng.normal(size=10_000)
    scores = [
        population_stability_index(reference, rng.normal(shift, 1.0, 10_000)) for shift in (0.2, 0.5, 1.0)
    ]
    assert scores == sorted(scores)
    assert scores[-1] > 0.25  # a one-sigma shift is a significant shift by the usual reading
    widened = population_stability_index(reference, rng.normal(0.0, 2.0, 10_000))
    assert widened > 0.25  # a variance change with the same mean is caught too


def test_psi_hand_computed_case() -> None:
    # Two reference bins split at the median 4.5 -> shares 0.5 / 0.5; the current sample has 8 of 10 below it.
    reference = np.arange(10.0)
    current = np.array([0, 1, 2, 3, 4, 0, 1, 2, 5, 6], dtype=float)
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)  # = 0.3 ln 4
    assert population_stability_index(reference, current, bins=2) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.3 * math.log(4.0))


def test_psi_empty_bin_takes_epsilon() -> None:
    reference, current = np.arange(10.0), np.array([0.0, 1.0, 2.0])  # nothing in the upper bin
    eps = PSI_EPSILON
    expected = (1.0 - 0.5) * math.log(1.0 / 0.5) + (eps - 0.5) * math.log(eps / 0.5)
    assert population_stability_index(reference, current, bins=2) == pytest.approx(expected, rel=1e-12)
    looser = population_stability_index(reference, current, bins=2, epsilon=1e-2)
    assert looser < expected  # a larger epsilon caps the penalty of an empty bin lower


def test_psi_counts_values_beyond_the_reference_range_in_the_outer_bins() -> None:
    reference = np.arange(100.0)
    above = np.full(50, 1e9)
    # Everything above the range lands in the top bin (reference share 0.1), nine bins go empty.
    expected = (1.0 - 0.1) * math.log(1.0 / 0.1) + 9 * (PSI_EPSILON - 0.1) * math.log(PSI_EPSILON / 0.1)
    assert population_stability_index(reference, above) == pytest.approx(expected, rel=1e-12)
    assert population_stability_index(reference, -above) == pytest.approx(expected, rel=1e-12)


def test_psi_ignores_nan_and_handles_tied_reference() -> None:
    reference = np.array([1.0, 2.0, np.nan, 3.0, 4.0])
    assert population_stability_index(
        reference, np.array([1.0, np.nan, 2.0, 3.0, 4.0]), bins=4
    ) == pytest.approx(0.0)
    constant = np.full(100, 5.0)  # every quantile ties: the bins collapse to "below 5" and "5 or above"
    assert population_stability_index(constant, np.full(10, 5.0)) == pytest.approx(0.0)
    assert math.isfinite(population_stability_index(constant, np.full(10, 4.0)))


def test_psi_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="bins"):
        population_stability_index(np.arange(5.0), np.arange(5.0), bins=0)
    with pytest.raises(ValueError, match="current has no finite values"):
        population_stability_index(np.arange(5.0), np.array([np.nan]))
    with pytest.raises(ValueError, match="epsilon"):
        population_stability_index(np.arange(5.0), np.arange(5.0), epsilon=0.0)


# ------------------------------------------------------------------------------------------------ feature drift


def _frames(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    reference = pd.DataFrame({"stable": rng.normal(size=2000), "shifted": rng.normal(size=2000)})
    current = pd.DataFrame({"stable": rng.normal(size=500), "shifted": rng.normal(0.8, 1.0, 500)})
    return reference, current


def test_feature_drift_ks_agrees_with_scipy_and_flags_the_shifted_column() -> None:
    reference, current = _frames(3)
    current.loc[:9, "stable"] = np.nan  # NaNs are dropped per column
    report = feature_drift(reference, current, ["stable", "shifted"])
    assert list(report.index) == ["stable", "shifted"] and list(report.columns) == list(FEATURE_DRIFT_COLUMNS)
    for column in ("stable", "shifted"):
        expected = stats.ks_2samp(reference[column], current[column].dropna())
        assert report.loc[column, "ks_statistic"] == pytest.approx(expected.statistic, rel=1e-12)
        assert report.loc[column, "ks_pvalue"] == pytest.approx(expected.pvalue, rel=1e-9)
        assert report.loc[column, "psi"] == pytest.approx(
            population_stability_index(reference[column].to_numpy(), current[column].dropna().to_numpy())
        )
        assert report.loc[column, "current_mean"] == pytest.approx(current[column].mean())
        assert report.loc[column, "current_std"] == pytest.approx(current[column].std(ddof=1))
        assert report.loc[column, "reference_std"] == pytest.approx(reference[column].std(ddof=1))
    assert report["drifted"].to_dict() == {"stable": False, "shifted": True}


def test_feature_drift_thresholds_are_parameters() -> None:
    reference, current = _frames(5)
    strict = feature_drift(reference, current, ["stable"], psi_threshold=0.0, ks_pvalue_threshold=0.0)
    assert bool(strict.loc["stable", "drifted"])  # any PSI >= 0 counts as drift
    lax = feature_drift(reference, current, ["shifted"], psi_threshold=100.0, ks_pvalue_threshold=0.0)
    assert not bool(lax.loc["shifted", "drifted"])


def test_feature_drift_names_missing_columns() -> None:
    reference, current = _frames(1)
    with pytest.raises(KeyError, match="'volume' \\(current\\)"):
        feature_drift(reference, current.drop(columns="shifted").assign(stable=1.0), ["stable", "volume"])


def test_feature_drift_between_a_calm_and_a_crisis_year_of_real_returns(dow30_bars: pd.DataFrame) -> None:
    """Daily returns and their absolute size: 2017 (calm) against 2020 (COVID crash), real Dow-30 data."""
    bars = dow30_bars.assign(date=pd.to_datetime(dow30_bars["date"])).sort_values(["tic", "date"])
    bars = bars[bars["tic"].isin(["AAPL", "JPM", "KO", "MSFT"])]
    returns = bars.groupby("tic")["close"].pct_change()
    features = pd.DataFrame({"date": bars["date"], "ret": returns, "abs_ret": returns.abs()}).dropna()
    calm = features[features["date"].dt.year == 2017]
    crisis = features[features["date"].dt.year == 2020]
    calm_halves = calm[calm["date"].dt.month <= 6], calm[calm["date"].dt.month > 6]

    crisis_report = feature_drift(calm, crisis, ["ret", "abs_ret"])
    calm_report = feature_drift(*calm_halves, ["ret", "abs_ret"])
    assert bool(crisis_report.loc["abs_ret", "drifted"])
    assert crisis_report.loc["abs_ret", "psi"] > 0.25
    assert crisis_report.loc["abs_ret", "current_mean"] > 2 * crisis_report.loc["abs_ret", "reference_mean"]
    assert (crisis_report["psi"] > calm_report["psi"]).all()
    assert not calm_report["drifted"].any()  # two halves of the calm year do not count as drift


# ------------------------------------------------------------------------------------------------ performance decay


def test_decay_detects_a_mean_shift() -> None:
    rng = np.random.default_rng(2024)
    reference = rng.normal(0.0008, 0.01, 500)
    recent = rng.normal(-0.0025, 0.01, 120)
    decay = performance_decay(reference, recent)
    assert isinstance(decay, PerformanceDecay)
    assert decay.decayed and decay.p_value < 0.01
    assert decay.recent_sharpe < decay.reference_sharpe
    assert decay.sharpe_difference == pytest.approx(decay.recent_sharpe - decay.reference_sharpe)
    assert decay.reference_sharpe == pytest.approx(sharpe_ratio(pd.Series(reference)))
    assert (decay.reference_periods, decay.recent_periods) == (500, 120)


def test_decay_ignores_noise() -> None:
    """Same distribution in both periods: at alpha 0.05 about one seed in twenty is a false alarm."""
    false_alarms = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        false_alarms += performance_decay(
            rng.normal(0.0005, 0.01, 500), rng.normal(0.0005, 0.01, 120)
        ).decayed
    assert false_alarms <= 3


def test_decay_is_one_sided_and_matches_the_welch_formula() -> None:
    rng = np.random.default_rng(9)
    reference, recent = rng.normal(0.0, 0.01, 300), rng.normal(0.003, 0.02, 60)
    decay = performance_decay(reference, recent)
    assert not decay.decayed and decay.p_value > 0.5  # better recent returns are no decay
    # Welch's t statistic and Welch-Satterthwaite degrees of freedom, written out.
    v1, v2 = recent.var(ddof=1) / len(recent), reference.var(ddof=1) / len(reference)
    t = (recent.mean() - reference.mean()) / math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1**2 / (len(recent) - 1) + v2**2 / (len(reference) - 1))
    assert decay.p_value == pytest.approx(stats.t.cdf(t, df), rel=1e-9)


def test_decay_edge_cases() -> None:
    flat = performance_decay(np.full(10, 0.001), np.full(5, -0.001))
    assert flat.decayed and flat.p_value == 0.0 and flat.reference_sharpe == 0.0
    assert not performance_decay(np.full(10, 0.001), np.full(5, 0.001)).decayed
    with pytest.raises(ValueError, match="at least 2"):
        performance_decay(np.arange(5.0), np.array([0.01, np.nan]))
    with pytest.raises(ValueError, match="alpha"):
        performance_decay(np.arange(5.0), np.arange(5.0), alpha=1.5)


def test_psi_against_training_deciles_and_which_features_are_tracked():
    from trading_core.agents.decision_spec import feature_deciles
    from trading_core.monitoring.drift import psi_against_quantiles

    rng = np.random.default_rng(11)
    train = pd.DataFrame({"rsi_30": rng.normal(50, 10, 5_000), "close_30_sma": rng.normal(100, 5, 5_000)})
    deciles = feature_deciles(train, ["rsi_30", "close_30_sma"])
    assert list(deciles) == ["rsi_30"]  # price-level averages drift with the price and are not tracked
    edges = np.asarray(deciles["rsi_30"])
    assert psi_against_quantiles(edges, rng.normal(50, 10, 2_000)) < 0.02
    assert psi_against_quantiles(edges, rng.normal(65, 10, 2_000)) > 0.25
    assert psi_against_quantiles(edges, np.array([np.nan])) == 0.0


# ------------------------------------------------------------------------------------------ live drift score


def test_live_drift_score_scores_the_window_on_its_bars_and_resumes_from_its_state() -> None:
    from trading_core.monitoring.drift import LiveDriftScore, psi_against_quantiles
    from trading_core.runtime.stored_json import dumps, loads

    rng = np.random.default_rng(3)
    reference = {"rsi": tuple(np.linspace(20, 80, 9)), "cci": tuple(np.linspace(-150, 150, 9))}
    # Two assets per bar; the second half drifts upwards.
    rows = [np.column_stack([rng.normal(40 + bar / 3, 15, 2), rng.normal(0, 100, 2)]) for bar in range(1, 61)]
    live = LiveDriftScore(reference, window=20, every=5)
    scores = [live.update(row, bar) for bar, row in enumerate(rows, start=1)]
    assert scores[:9] == [None] * 9  # half the window (10 bars) first, then the 10th bar scores
    recent = np.concatenate(rows[40:60])
    expected = max(
        psi_against_quantiles(np.asarray(e), recent[:, i]) for i, e in enumerate(reference.values())
    )
    assert scores[-1] == expected
    assert scores[-2] == scores[-6] != scores[-7]  # bar 55's score is kept until bar 60 scores

    resumed, uninterrupted = LiveDriftScore(reference, 20, 5), LiveDriftScore(reference, 20, 5)
    for bar, row in enumerate(rows[:33], start=1):
        uninterrupted.update(row, bar)
    resumed.load_state(loads(dumps("drift", 1, uninterrupted.state()), "drift", 1, "test"))
    for bar, row in enumerate(rows[33:], start=34):
        assert resumed.update(row, bar) == uninterrupted.update(row, bar)
    with pytest.raises(ValueError, match="do not score the 2 columns"):
        resumed.load_state({"rows": np.zeros((3, 2, 5)), "score": None})
