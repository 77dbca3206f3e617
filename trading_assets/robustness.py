"""Stage 6: robustness of the candidate — stress tests (part of the promotion gate) and walk-forward retraining."""

from dataclasses import dataclass, replace

import dagster as dg
import pandas as pd

from resources.mlflow_registry import MlflowRegistryResource, RegisteredVersion
from trading_assets.features import DatasetSplits
from trading_assets.learning import RegisteredForecaster, feature_builder
from trading_assets.metadata import markdown_table, png_metadata
from trading_assets.training import TrainedAgent
from trading_core.metrics import deflated_sharpe_ratio
from trading_core.plots import equity_curve_png, grouped_bars_png
from trading_core.promotion import GateResult
from trading_core.seed_sweep import (
    SeedTask,
    distribution,
    per_period_sharpe_variance,
    run_seed_sweep,
    seed_table,
)
from trading_core.stress import StressResult, run_stress_tests
from trading_core.walk_forward import WalkForwardResult, run_walk_forward, walk_forward_windows


class StressSettings(dg.Config):
    """Stress scenarios and the limit that joins the promotion gate."""

    max_stress_drawdown: float = 0.25
    shock_offset: int = 10


@dataclass(frozen=True)
class StressReport:
    """Every scenario's result for one registered version, and the gate verdict on them."""

    version: str
    results: tuple[StressResult, ...]
    gate: tuple[GateResult, ...]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([r.row() for r in self.results])


def _normalized(curve: pd.Series) -> pd.Series:
    return (curve / curve.iloc[0]).reset_index(drop=True)


@dg.asset(
    group_name="evaluation",
    compute_kind="backtest",
    check_specs=[
        dg.AssetCheckSpec(
            name="stress_drawdown_limit",
            asset="stress_tests",
            description="max drawdown of the agent in every stress scenario within the configured limit",
            blocking=True,
        )
    ],
)
def stress_tests(
    context: dg.AssetExecutionContext,
    config: StressSettings,
    registered_model: RegisteredVersion,
    trained_agent: TrainedAgent,
    validated_daily_bars: pd.DataFrame,
    features: pd.DataFrame,
    learned_features: DatasetSplits,
    cnn_lstm_model: RegisteredForecaster,
    model_registry: MlflowRegistryResource,
):
    """The registered version through crises inside the data and synthetic shocks: gap, volatility, liquidity, correlation."""
    policy = model_registry.load_policy(registered_model.version)
    split = learned_features.split
    build = feature_builder(features, cnn_lstm_model.forecaster)
    results = run_stress_tests(
        policy,
        validated_daily_bars,
        trained_agent.observation_frame(learned_features.full),
        split.test_start,
        split.test_end,
        trained_agent.env_spec,
        shock_offset=config.shock_offset,
        rebuild=lambda bars: trained_agent.observation_frame(build(bars)),
    )
    worst = max(results, key=lambda r: r.max_drawdown)
    gate = (
        GateResult(
            "stress_drawdown_limit",
            worst.max_drawdown <= config.max_stress_drawdown,
            worst.max_drawdown,
            config.max_stress_drawdown,
            f"worst stress drawdown {worst.max_drawdown:.1%} ({worst.name}) vs allowed <= {config.max_stress_drawdown:.1%}",
        ),
    )
    report = StressReport(registered_model.version, tuple(results), gate)
    png = equity_curve_png(
        {r.name: _normalized(r.equity) for r in results},
        "Agent equity through each stress scenario",
        "growth of 1",
    )
    model_registry.log_evaluation(
        registered_model.run_id,
        metrics={
            **{f"stress_{r.name}_max_drawdown": r.max_drawdown for r in results},
            **{f"stress_{r.name}_return": r.total_return for r in results},
            "stress_worst_max_drawdown": worst.max_drawdown,
        },
        files={"stress_tests.png": png},
        tables={"stress_tests.json": report.table().to_dict(orient="records")},
    )
    yield dg.Output(
        report,
        metadata={
            "scenarios": markdown_table(report.table().to_dict(orient="records")),
            "worst_max_drawdown": dg.MetadataValue.float(worst.max_drawdown),
            "worst_scenario": worst.name,
            "equity_curves": png_metadata(png),
        },
    )
    yield dg.AssetCheckResult(
        check_name="stress_drawdown_limit",
        passed=gate[0].passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=gate[0].description,
        metadata={"value": float(gate[0].value), "threshold": float(gate[0].threshold)},
    )


class WalkForwardSettings(dg.Config):
    """Windows of the walk-forward evaluation and the training budget per window."""

    n_windows: int = 3
    test_dates: int = 126
    scheme: str = "expanding"
    train_dates: int | None = None
    purge: int = 5
    embargo: int = 5
    timesteps_per_window: int = 10_000
    use_ray: bool = True


@dg.asset(group_name="evaluation", compute_kind="stable_baselines3")
def walk_forward(
    context: dg.AssetExecutionContext,
    config: WalkForwardSettings,
    features: pd.DataFrame,
    trained_agent: TrainedAgent,
    model_registry: MlflowRegistryResource,
) -> dg.Output[WalkForwardResult]:
    """The training procedure re-run per window (purged, embargoed), each agent traded on the next unseen window."""
    windows = walk_forward_windows(
        features["date"],
        n_windows=config.n_windows,
        test_size=config.test_dates,
        train_size=config.train_dates,
        scheme="rolling" if config.scheme == "rolling" else "expanding",
        purge=config.purge,
        embargo=config.embargo,
    )
    budget = replace(trained_agent.ppo_config, total_timesteps=config.timesteps_per_window)
    result = run_walk_forward(
        features,
        windows,
        trained_agent.env_spec,
        budget,
        seed=trained_agent.seed,
        report=context.log.info,
        use_ray=config.use_ray,
    )
    png = equity_curve_png(
        {"walk-forward agent": result.equity, "equal-weight buy and hold": result.benchmark_equity},
        "Stitched out-of-sample walk-forward equity",
    )
    table = result.table()
    model_registry.log_evaluation(
        trained_agent.run_id,
        metrics={
            **{f"walk_forward_{k}": v for k, v in result.metrics.as_dict().items()},
            **{f"walk_forward_buy_and_hold_{k}": v for k, v in result.benchmark_metrics.as_dict().items()},
        },
        files={"walk_forward.png": png},
        tables={"walk_forward.json": table.to_dict(orient="records")},
    )
    return dg.Output(
        result,
        metadata={
            "windows": markdown_table(table.to_dict(orient="records")),
            "sharpe": dg.MetadataValue.float(result.metrics.sharpe),
            "buy_and_hold_sharpe": dg.MetadataValue.float(result.benchmark_metrics.sharpe),
            "total_return": dg.MetadataValue.float(result.metrics.total_return),
            "equity_curve": png_metadata(png),
        },
    )


class SeedSweepSettings(dg.Config):
    """Seeds of the sweep and the gate on its distribution."""

    n_seeds: int = 3
    timesteps: int | None = None
    use_ray: bool = True
    min_p25_sharpe: float = 0.5
    min_deflated_sharpe: float = 0.5


@dataclass(frozen=True)
class SeedSweepReport:
    """The candidate recipe under several seeds, the distribution of its metrics and the gate on them."""

    table: pd.DataFrame
    distribution: pd.DataFrame
    n_trials: int
    deflated_sharpe: float
    gate: tuple[GateResult, ...]


SEED_GATE_CHECKS = {
    "seed_p25_sharpe": "25th percentile over seeds of the out-of-sample Sharpe at least the configured minimum",
    "deflated_sharpe": "deflated Sharpe ratio (trials counted from the experiment's MLflow runs) at least the minimum",
}


@dg.asset(
    group_name="evaluation",
    compute_kind="ray",
    check_specs=[
        dg.AssetCheckSpec(name=name, asset="seed_sweep", description=text, blocking=True)
        for name, text in SEED_GATE_CHECKS.items()
    ],
)
def seed_sweep(
    context: dg.AssetExecutionContext,
    config: SeedSweepSettings,
    trained_agent: TrainedAgent,
    learned_features: DatasetSplits,
    model_registry: MlflowRegistryResource,
):
    """The candidate's training recipe retrained under several seeds (Ray tasks), each judged out of sample."""
    ppo = trained_agent.ppo_config
    recipe = replace(ppo, total_timesteps=config.timesteps or ppo.total_timesteps).as_agent_config()
    frames = [
        trained_agent.observation_frame(f)
        for f in (learned_features.train, learned_features.validation, learned_features.test)
    ]
    seeds = [trained_agent.seed + offset for offset in range(config.n_seeds)]
    tasks = [SeedTask("ppo", seed, recipe, trained_agent.env_spec, *frames) for seed in seeds]
    context.log.info(f"seed sweep: {len(tasks)} seeds {'on Ray' if config.use_ray else 'in turn'}")
    outcomes = run_seed_sweep(tasks, use_ray=config.use_ray)
    for outcome in outcomes:
        model_registry.log_trial(
            f"seed_sweep_seed_{outcome.seed}",
            params={"algorithm": "ppo", "seed": outcome.seed, "candidate_run": trained_agent.run_id},
            metrics={
                "validation_sharpe": outcome.validation_sharpe,
                "test_sharpe": outcome.test_sharpe,
                "test_max_drawdown": outcome.test_max_drawdown,
            },
            kind="seed_sweep",
        )
    table = seed_table(outcomes)
    stats = distribution(table)
    n_trials = max(model_registry.trial_count(), 1)
    candidate = next(o for o in outcomes if o.seed == trained_agent.seed)
    deflated = deflated_sharpe_ratio(candidate.test_returns, n_trials, per_period_sharpe_variance(outcomes))
    p25 = float(stats.loc["test_sharpe", "p25"])
    gate = (
        GateResult(
            "seed_p25_sharpe",
            p25 >= config.min_p25_sharpe,
            p25,
            config.min_p25_sharpe,
            f"25th percentile of test Sharpe over {len(outcomes)} seeds {p25:.2f} vs required >= {config.min_p25_sharpe:.2f}",
        ),
        GateResult(
            "deflated_sharpe",
            deflated >= config.min_deflated_sharpe,
            deflated,
            config.min_deflated_sharpe,
            f"deflated Sharpe {deflated:.2f} over {n_trials} trials vs required >= {config.min_deflated_sharpe:.2f}",
        ),
    )
    report = SeedSweepReport(table, stats, n_trials, deflated, gate)
    png = grouped_bars_png(
        table.set_index("seed")[["validation_sharpe", "test_sharpe"]], "Sharpe ratio per seed", "Sharpe"
    )
    model_registry.log_evaluation(
        trained_agent.run_id,
        metrics={
            "seed_sweep_test_sharpe_p25": p25,
            "seed_sweep_test_sharpe_median": float(stats.loc["test_sharpe", "median"]),
            "seed_sweep_test_sharpe_std": float(stats.loc["test_sharpe", "std"]),
            "deflated_sharpe": deflated,
            "trials": n_trials,
        },
        files={"seed_sweep.png": png},
        tables={
            "seed_sweep.json": table.to_dict(orient="records"),
            "seed_distribution.json": stats.reset_index(names="metric").to_dict(orient="records"),
        },
    )
    yield dg.Output(
        report,
        metadata={
            "seeds": markdown_table(table.to_dict(orient="records")),
            "distribution": dg.MetadataValue.md(stats.to_markdown(floatfmt=".3f")),
            "deflated_sharpe": dg.MetadataValue.float(deflated),
            "trials": n_trials,
            "sharpe_per_seed": png_metadata(png),
        },
    )
    for result in gate:
        yield dg.AssetCheckResult(
            check_name=result.name,
            passed=result.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=result.description,
            metadata={"value": float(result.value), "threshold": float(result.threshold)},
        )
