"""Stage 7: the champion under watch — feature drift, performance decay and a lasting market regime change
since its training, each a reason to retrain."""

from dataclasses import dataclass

import dagster as dg
import pandas as pd

from resources.mlflow_registry import CHAMPION_ALIAS, MlflowRegistryResource
from trading_assets.config_defaults import default_of
from trading_assets.metadata import markdown_table, number
from trading_assets.regimes import MarketRegimes
from trading_core.agents.decision_spec import DRIFT_FEATURE_PREFIXES
from trading_core.allocators.prior import with_prior_column
from trading_core.data.schema import indicator_columns_of
from trading_core.evaluation.backtester import run_backtest
from trading_core.evaluation.metrics import daily_returns
from trading_core.evaluation.regime_split import RegimeShift, regime_shift_of_bars
from trading_core.models.cnn_lstm import add_learned_features
from trading_core.models.cnn_lstm import learned_features as forecast_features
from trading_core.monitoring.drift import PerformanceDecay, feature_drift, performance_decay
from trading_core.regimes.history import add_regime_features
from trading_core.regimes.model import RegimeModel, market_signals, regime_changes

MONITORING_CHECKS = {
    "feature_drift": "share of technical features drifted since the champion's training window below the limit",
    "performance_decay": "the champion's recent returns not significantly below its out-of-sample test returns",
}


class ChampionMonitoringSettings(dg.Config):
    """Windows and thresholds of champion monitoring (the drift and decay tests' defaults: :func:`feature_drift`,
    :func:`performance_decay`; the dates a regime must hold to count as changed: :func:`regime_changes`)."""

    recent_dates: int = 63
    psi_threshold: float = default_of(feature_drift, "psi_threshold")
    ks_pvalue_threshold: float = default_of(feature_drift, "ks_pvalue_threshold")
    max_drifted_share: float = 0.5
    decay_alpha: float = default_of(performance_decay, "alpha")
    regime_min_days: int = default_of(regime_changes, "min_duration")


@dataclass(frozen=True)
class ChampionHealth:
    """Drift, decay and the market regime since training of the model holding ``champion``, and whether to
    retrain.

    :param reasons: every reason to retrain: drift and decay first, then a lasting regime change
    :param regime_shift: the regime in force at the end of the champion's training and now (``None`` without
        a champion)
    """

    version: str | None
    drift: pd.DataFrame | None
    drifted_share: float
    decay: PerformanceDecay | None
    recent_window: str
    recent_is_new_data: bool
    reasons: tuple[str, ...]
    regime_shift: RegimeShift | None = None

    @property
    def retrain_recommended(self) -> bool:
        return bool(self.reasons)

    @property
    def degradation_reasons(self) -> tuple[str, ...]:
        """The reasons that are feature drift or performance decay, not a regime change."""
        change = self.regime_reason
        return tuple(reason for reason in self.reasons if reason != change)

    @property
    def regime_reason(self) -> str:
        return "" if self.regime_shift is None else regime_reason(self.regime_shift)


def regime_reason(shift: RegimeShift) -> str:
    """The reason to retrain a lasting regime change gives; empty when the regime in force has not changed."""
    return f"regime change: {shift.describe()}" if shift.changed else ""


def _regime_metadata(shift: RegimeShift, version: str) -> dict:
    """What the UI and the degradation sensor read of the regime since the champion's training."""
    changes = shift.changes.assign(
        date=shift.changes["date"].dt.date.astype(str),
        confirmed_on=shift.changes["confirmed_on"].dt.date.astype(str),
    )
    return {
        "current_regime": dg.MetadataValue.int(shift.current_regime),
        "regime_at_training_end": "none held yet" if shift.regime_then is None else str(shift.regime_then),
        "regime_in_force": "none held yet" if shift.regime_now is None else str(shift.regime_now),
        "regime_changes_since_training": markdown_table(changes.to_dict(orient="records"))
        if len(changes)
        else "none",
        "regime_change": shift.describe(),
        "regime_change_key": f"v{version}-{shift.key}" if shift.changed else "",
    }


def _window(frame: pd.DataFrame, start: str, end: str) -> pd.DataFrame:
    return frame[frame["date"].between(pd.Timestamp(start), pd.Timestamp(end))]


@dg.asset(
    group_name="monitoring",
    compute_kind="scipy",
    check_specs=[
        dg.AssetCheckSpec(name=name, asset="champion_monitoring", description=text)
        for name, text in MONITORING_CHECKS.items()
    ],
)
def champion_monitoring(
    context: dg.AssetExecutionContext,
    config: ChampionMonitoringSettings,
    features: pd.DataFrame,
    market_regimes: MarketRegimes,
    model_registry: MlflowRegistryResource,
):
    """PSI/KS drift of the features, a decay test of the champion's recent returns against its test period, and
    the market regime in force now against the one at the end of its training (the stored regime model filtered
    forward)."""
    version = model_registry.version_for_alias(CHAMPION_ALIAS)
    if version is None:
        health = ChampionHealth(None, None, 0.0, None, "", False, ())
        yield dg.Output(
            health,
            metadata={
                "champion": "none yet",
                "retrain_recommended": False,
                "reasons": "",
                "degradation_reasons": "",
                "regime_change": "",
            },
        )
        for name in MONITORING_CHECKS:
            yield dg.AssetCheckResult(check_name=name, passed=True, description="no champion to monitor yet")
        return

    tags = model_registry.version_run_tags(version)
    policy, spec = model_registry.load_decision_bundle(version)
    if spec is None:
        raise dg.Failure(
            f"champion v{version} was registered without a decision spec; retrain it to monitor it"
        )
    frame = features
    if spec.forecaster_uri:
        forecaster = model_registry.load_forecaster(spec.forecaster_uri)
        frame = add_learned_features(features, forecast_features(forecaster, features))
    frame = frame[frame["tic"].isin(spec.tickers)]
    if (
        spec.regime_model is not None
    ):  # the regime probabilities it observes, filtered forward by its own model
        regime_model = RegimeModel.from_dict(spec.regime_model)
        signals = market_signals(frame, regime_model.config.volatility_window)
        frame = add_regime_features(frame, regime_model.filter(signals))
    if spec.prior is not None:  # the allocator weights a tilting champion observes, fit on the full history
        frame = with_prior_column(frame, spec.prior)
    missing = [c for c in spec.observation_columns if c not in frame.columns]
    if missing:
        raise dg.Failure(f"features lack columns the champion observes: {', '.join(missing)}")
    frame = frame[spec.observation_columns]

    dates = frame["date"].drop_duplicates().sort_values()
    recent = frame[frame["date"] >= dates.iloc[-config.recent_dates]]
    test_end = pd.Timestamp(tags["data_test_end"])
    recent_is_new = recent["date"].min() > test_end
    reference = _window(frame, tags["data_train_start"], tags["data_train_end"])
    # The same scale-free features live trading's drift score tracks; price levels drift with every trend.
    columns = [c for c in indicator_columns_of(features) if c.startswith(DRIFT_FEATURE_PREFIXES)]
    drift = feature_drift(
        reference,
        recent,
        columns,
        psi_threshold=config.psi_threshold,
        ks_pvalue_threshold=config.ks_pvalue_threshold,
    )
    drifted_share = float(drift["drifted"].mean()) if len(drift) else 0.0

    test = _window(frame, tags["data_test_start"], tags["data_test_end"])
    test_returns = daily_returns(run_backtest(policy, spec.market_of(test), spec.env_spec).equity)
    recent_returns = daily_returns(run_backtest(policy, spec.market_of(recent), spec.env_spec).equity)
    decay = performance_decay(test_returns, recent_returns, alpha=config.decay_alpha)

    # The regime model filtered forward over the champion's universe, from the first features date to today.
    shift = regime_shift_of_bars(
        market_regimes.regime_model(),
        features.loc[features["tic"].isin(spec.tickers), ["date", "tic", "close"]],
        tags["data_train_end"],
        config.regime_min_days,
    )

    reasons = []
    if drifted_share >= config.max_drifted_share:
        drifted = ", ".join(drift.index[drift["drifted"]])
        reasons.append(f"feature drift: {drifted_share:.0%} of features drifted ({drifted})")
    if decay.decayed:
        reasons.append(
            f"performance decay: recent Sharpe {decay.recent_sharpe:.2f} vs test {decay.reference_sharpe:.2f} "
            f"(p={decay.p_value:.3f})"
        )
    window = f"{recent['date'].min().date()}..{recent['date'].max().date()}"
    if shift.changed:
        reasons.append(regime_reason(shift))
    health = ChampionHealth(
        version, drift, drifted_share, decay, window, recent_is_new, tuple(reasons), shift
    )
    context.log.info(f"champion v{version}: {'; '.join(reasons) or 'healthy'}")
    yield dg.Output(
        health,
        metadata={
            "champion": f"{model_registry.model_name} v{version}",
            "recent_window": window,
            "recent_is_new_data": recent_is_new,
            "drifted_share": number(drifted_share),
            "drift": dg.MetadataValue.md(drift.to_markdown(floatfmt=".3f")),
            "decay": markdown_table([decay.as_dict()]),
            "retrain_recommended": health.retrain_recommended,
            "reasons": "; ".join(reasons),
            "degradation_reasons": "; ".join(health.degradation_reasons),
            **_regime_metadata(shift, version),
        },
    )
    yield dg.AssetCheckResult(
        check_name="feature_drift",
        passed=drifted_share < config.max_drifted_share,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{drifted_share:.0%} of {len(drift)} features drifted (limit {config.max_drifted_share:.0%})",
    )
    note = "" if recent_is_new else " (the recent window overlaps the test period: no new data since)"
    yield dg.AssetCheckResult(
        check_name="performance_decay",
        passed=not decay.decayed,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"recent Sharpe {decay.recent_sharpe:.2f} vs test {decay.reference_sharpe:.2f}, "
        f"p={decay.p_value:.3f}{note}",
    )
