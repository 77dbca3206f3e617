"""Stage 5: out-of-sample judgement of candidates — the backtest of the registered version and the promotion
gate on it, stress tests, walk-forward retraining, the seed sweep, and the gate's verdict on every zoo candidate.

The gate criteria are asset checks that fail (red, with their figures) without failing the run: a rejection is
the system working as designed. ``champion_model`` always completes with a verdict, promoted or not promoted
with every reason; the gate still gates, since it moves ``champion`` only when every gate step of this run
passed, and a rejected version keeps only its ``challenger`` alias.
"""

from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal, TypedDict

import dagster as dg
import pandas as pd

from resources.mlflow_registry import (
    CHAMPION_ALIAS,
    MODEL_CARD_FACTS_FILE,
    MlflowRegistryResource,
    PromotionRefused,
)
from trading_assets.config_defaults import DomainCheckedConfig, default_of
from trading_assets.learning import RegisteredForecaster
from trading_assets.metadata import (
    markdown_cell,
    markdown_table,
    mlflow_plot,
    mlflow_run_link,
    mlflow_version_link,
    number,
    png_metadata,
    readable,
)
from trading_assets.regimes import MarketRegimes
from trading_assets.reporting import log_tearsheet, model_card_facts
from trading_assets.selection import LeaderboardReport, RegisteredCandidate
from trading_assets.training import (
    ENSEMBLE_MODEL_NAME,
    AgentZooReport,
    EnsembleReport,
    TrainedAgent,
    agent_market,
)
from trading_core.allocators.prior import with_prior_column
from trading_core.data.splits import PERIODS, DatasetSplits
from trading_core.evaluation.attribution import attribute_pnl, attribution_summary
from trading_core.evaluation.backtester import (
    BacktestRecord,
    BacktestResult,
    run_backtest,
)
from trading_core.evaluation.metrics import (
    PerformanceMetrics,
    deflated_sharpe_ratio,
)
from trading_core.evaluation.plots import equity_curve_png, grouped_bars_png, scenario_panels_png
from trading_core.evaluation.promotion import (
    SELECTION_RULE,
    CandidateThresholds,
    CandidateVerdict,
    GateRecord,
    GateResult,
    PromotionThresholds,
    binding_problems,
    evaluate_gate,
    failed_criteria,
    judge_figures,
    promotion_note,
    yardstick_gate,
)
from trading_core.evaluation.regime_split import compare_by_regime
from trading_core.evaluation.seed_sweep import (
    SeedSweepConfig,
    SeedTask,
    distribution,
    per_period_sharpe_variance,
    run_seed_sweep,
    seed_table,
)
from trading_core.evaluation.stress import StressConfig, StressResult, run_stress_tests
from trading_core.evaluation.walk_forward import WalkForwardConfig, WalkForwardResult, run_walk_forward
from trading_core.market.arrays import MarketArrays
from trading_core.models.cnn_lstm import feature_builder
from trading_core.regimes.history import regime_feature_builder
from trading_core.regimes.model import RegimeModel

# The gate steps whose passing records, of the registered version and from the promoting run, promotion needs.
GATE_STEPS = ("backtest", "stress_tests", "seed_sweep")
BUY_AND_HOLD = "equal-weight buy and hold"  # the benchmark's label in every plot

GATE_CHECKS = {
    "min_sharpe": "out-of-sample Sharpe after costs at least the configured minimum",
    "max_drawdown": "out-of-sample max drawdown at most the configured limit",
    "max_var_95": "out-of-sample one-day VaR95 at most the configured share of the portfolio",
    "beats_buy_and_hold": "out-of-sample Sharpe above equal-weight buy-and-hold",
}


class StressSettings(dg.Config):
    """Stress scenarios and the limit that joins the promotion gate (defaults: :class:`StressConfig`)."""

    max_stress_drawdown: float = default_of(StressConfig, "max_stress_drawdown")
    shock_offset: int = default_of(StressConfig, "shock_offset")


@dataclass(frozen=True)
class StressReport:
    """Every scenario's result for one registered version, and the gate verdict on them.

    :param dagster_run_id: the run that judged the version
    """

    step: ClassVar[str] = "stress_tests"
    version: str
    dagster_run_id: str
    results: tuple[StressResult, ...]
    gate: tuple[GateResult, ...]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([r.row() for r in self.results])

    def gate_record(self) -> GateRecord:
        return GateRecord.of(self.step, self.version, self.dagster_run_id, self.gate)


def _check_results(record: GateRecord, gate: tuple[GateResult, ...]):
    """The gate checks of a gate step, each naming the version it judged and the run. They are not blocking:
    ``champion_model`` reads the verdict itself and reports it, so a rejection completes the run."""
    for result in gate:
        yield dg.AssetCheckResult(
            check_name=result.name,
            passed=result.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=result.description,
            metadata={
                "value": number(result.value),
                "threshold": number(result.threshold),
                **_bound_to(record),
            },
        )


def _bound_to(record: GateRecord) -> dict[str, str]:
    """The metadata naming the version a gate step judged and the run it judged in."""
    return {"model_version": record.version, "dagster_run_id": record.run_id}


def _normalized(curve: pd.Series) -> pd.Series:
    """The curve as growth of 1, on its own dates."""
    return curve / curve.iloc[0]


def _run_links(
    run_id: str, model_name: str | None = None, version: str | None = None
) -> dict[str, dg.MetadataValue]:
    """Links to the MLflow run the step logged to and, when it judged one, the registry version."""
    links = {"mlflow_run": mlflow_run_link(run_id)}
    if model_name is not None and version is not None:
        links["mlflow_model_version"] = mlflow_version_link(model_name, version)
    return links


def _plots(name: str, png: bytes, run_id: str, artifact: str, title: str) -> dict[str, dg.MetadataValue]:
    """A plot twice: inline from the MLflow run it was logged to, and embedded (shown on expanding) for when the
    MLflow UI is not running."""
    return {
        name: mlflow_plot(run_id, f"evaluation/{artifact}", title),
        f"{name}_embedded": png_metadata(png),
    }


@dg.asset(
    group_name="evaluation",
    compute_kind="backtest",
    check_specs=[
        dg.AssetCheckSpec(
            name="stress_drawdown_limit",
            asset="stress_tests",
            description="max drawdown of the agent in every stress scenario within the configured limit",
        )
    ],
)
def stress_tests(
    context: dg.AssetExecutionContext,
    config: StressSettings,
    registered_model: RegisteredCandidate,
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
    if learned_features.regime_model is not None:
        # Shocked bars move the market signals: the regimes are filtered again from them, as they would be live.
        model = RegimeModel.from_dict(learned_features.regime_model)
        build = regime_feature_builder(build, model, tickers=learned_features.tickers)
    env_spec = registered_model.env_spec
    prior = env_spec.action.prior

    def rebuild(bars: pd.DataFrame) -> pd.DataFrame:
        frame = trained_agent.observation_frame(build(bars))
        # A tilting agent's prior refits on the shocked prices, as it would live.
        return frame if prior is None else with_prior_column(frame, prior)

    results = run_stress_tests(
        policy,
        validated_daily_bars,
        agent_market(trained_agent, learned_features, env_spec),  # the universe every scenario trades
        split.test_start,
        split.test_end,
        env_spec,
        shock_offset=config.shock_offset,
        rebuild=rebuild,
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
    report = StressReport(registered_model.version, context.op_execution_context.run_id, tuple(results), gate)
    record = report.gate_record()
    model_registry.record_gate(record, checks=gate)
    png = scenario_panels_png(
        {
            f"{r.name} ({r.start.date()} .. {r.end.date()})": {
                "agent": _normalized(r.equity),
                BUY_AND_HOLD: _normalized(r.benchmark_equity),
            }
            for r in results
        },
        f"{registered_model.name} v{registered_model.version} through each stress scenario",
        benchmark=BUY_AND_HOLD,
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
        metadata=readable(
            {
                "scenarios": markdown_table(report.table().to_dict(orient="records")),
                "worst_max_drawdown": worst.max_drawdown,
                "worst_scenario": worst.name,
                **_plots(
                    "equity_curves", png, registered_model.run_id, "stress_tests.png", "stress scenarios"
                ),
                **_bound_to(record),
                **_run_links(registered_model.run_id, registered_model.name, registered_model.version),
            }
        ),
    )
    yield from _check_results(record, gate)


class WalkForwardSettings(DomainCheckedConfig):
    """Windows of the walk-forward evaluation and the training budget per window (:class:`WalkForwardConfig`)."""

    n_windows: int = default_of(WalkForwardConfig, "n_windows")
    test_dates: int = default_of(WalkForwardConfig, "test_dates")
    scheme: str = default_of(WalkForwardConfig, "scheme")
    train_dates: int | None = default_of(WalkForwardConfig, "train_dates")
    purge: int = default_of(WalkForwardConfig, "purge")
    embargo: int = default_of(WalkForwardConfig, "embargo")
    timesteps_per_window: int = default_of(WalkForwardConfig, "timesteps_per_window")
    use_ray: bool = default_of(WalkForwardConfig, "use_ray")
    compare_warm_start: bool = default_of(WalkForwardConfig, "compare_warm_start")
    warm_start_timesteps: int = default_of(WalkForwardConfig, "warm_start_timesteps")
    warm_start_dates: int = default_of(WalkForwardConfig, "warm_start_dates")

    def to_domain(self) -> WalkForwardConfig:
        """The domain settings; any scheme but ``rolling`` reads as ``expanding``."""
        scheme: Literal["rolling", "expanding"] = "rolling" if self.scheme == "rolling" else "expanding"
        return WalkForwardConfig(**{**self.model_dump(), "scheme": scheme})


@dg.asset(group_name="evaluation", compute_kind="stable_baselines3")
def walk_forward(
    context: dg.AssetExecutionContext,
    config: WalkForwardSettings,
    features: pd.DataFrame,
    trained_agent: TrainedAgent,
    model_registry: MlflowRegistryResource,
) -> dg.Output[WalkForwardResult]:
    """The training procedure re-run per window (purged, embargoed), each agent traded on the next unseen window;
    with ``compare_warm_start``, warm starts against training from scratch on the same windows, and the verdict
    the ``auto`` start mode follows."""
    settings = config.to_domain()
    windows = settings.windows(features["date"])
    budget = replace(trained_agent.ppo_config, total_timesteps=config.timesteps_per_window)
    # No champion seeds the warm-start chain: it trained on dates inside these test windows.
    result = run_walk_forward(
        features,
        windows,
        trained_agent.env_spec,
        budget,
        seed=trained_agent.seed,
        report=context.log.info,
        use_ray=config.use_ray,
        warm_start=settings.warm_start_budget(),
    )
    comparison = result.comparison
    start_mode_metadata = {}
    if comparison is not None:
        model_registry.record_start_mode_verdict(trained_agent.run_id, comparison.verdict, comparison.reason)
        context.log.info(f"walk-forward start-mode verdict: {comparison.reason}")
        start_mode_metadata = {
            "start_modes": markdown_table(comparison.table().to_dict(orient="records")),
            "start_mode_verdict": comparison.verdict,
            "start_mode_reason": comparison.reason,
        }
    png = equity_curve_png(
        {"walk-forward agent": result.equity, BUY_AND_HOLD: result.benchmark_equity},
        "Stitched out-of-sample walk-forward equity",
        benchmark=BUY_AND_HOLD,
    )
    table = result.table()
    model_registry.log_evaluation(
        trained_agent.run_id,
        metrics={
            **{f"walk_forward_{k}": v for k, v in result.metrics.as_dict().items()},
            **{f"walk_forward_buy_and_hold_{k}": v for k, v in result.benchmark_metrics.as_dict().items()},
            **{
                f"walk_forward_start_mode_{k}": v
                for k, v in (comparison.metrics() if comparison else {}).items()
            },
        },
        files={"walk_forward.png": png},
        tables={
            "walk_forward.json": table.to_dict(orient="records"),
            **(
                {"walk_forward_start_modes.json": comparison.table().to_dict(orient="records")}
                if comparison
                else {}
            ),
        },
    )
    return dg.Output(
        result,
        metadata=readable(
            {
                "windows": markdown_table(table.to_dict(orient="records")),
                "sharpe": result.metrics.sharpe,
                "buy_and_hold_sharpe": result.benchmark_metrics.sharpe,
                "total_return": result.metrics.total_return,
                **_plots(
                    "equity_curve", png, trained_agent.run_id, "walk_forward.png", "walk-forward equity"
                ),
                **start_mode_metadata,
                **_run_links(trained_agent.run_id),
            }
        ),
    )


class SeedSweepSettings(DomainCheckedConfig):
    """Seeds of the sweep and the gate on its distribution (defaults: :class:`SeedSweepConfig`)."""

    n_seeds: int = default_of(SeedSweepConfig, "n_seeds")
    timesteps: int | None = default_of(SeedSweepConfig, "timesteps")
    use_ray: bool = default_of(SeedSweepConfig, "use_ray")
    min_p25_sharpe: float = default_of(SeedSweepConfig, "min_p25_sharpe")
    min_deflated_sharpe: float = default_of(SeedSweepConfig, "min_deflated_sharpe")
    must_beat_yardsticks: bool = default_of(SeedSweepConfig, "must_beat_yardsticks")

    def to_domain(self) -> SeedSweepConfig:
        return SeedSweepConfig(**self.model_dump())


@dataclass(frozen=True)
class SeedSweepReport:
    """The candidate recipe under several seeds, the distribution of its metrics and the gate on them.

    :param version: the registered version whose recipe was swept
    :param dagster_run_id: the run that judged it
    """

    step: ClassVar[str] = "seed_sweep"
    version: str
    dagster_run_id: str
    table: pd.DataFrame
    distribution: pd.DataFrame
    n_trials: int
    deflated_sharpe: float
    gate: tuple[GateResult, ...]

    def gate_record(self) -> GateRecord:
        return GateRecord.of(self.step, self.version, self.dagster_run_id, self.gate)


SEED_GATE_CHECKS = {
    "seed_p25_sharpe": "25th percentile over seeds of the out-of-sample Sharpe at least the configured minimum",
    "deflated_sharpe": "deflated Sharpe ratio (trials counted from the experiment's MLflow runs) at least the minimum",
    "p25_beats_buy_and_hold": "25th percentile over seeds of the test Sharpe above equal-weight buy-and-hold",
    "p25_beats_allocator": "25th percentile over seeds of the test Sharpe above the classical allocator validation picked",
}


@dg.asset(
    group_name="evaluation",
    compute_kind="ray",
    check_specs=[
        dg.AssetCheckSpec(name=name, asset="seed_sweep", description=text)
        for name, text in SEED_GATE_CHECKS.items()
    ],
)
def seed_sweep(
    context: dg.AssetExecutionContext,
    config: SeedSweepSettings,
    registered_model: RegisteredCandidate,
    candidate_leaderboard: LeaderboardReport,
    trained_agent: TrainedAgent,
    learned_features: DatasetSplits,
    model_registry: MlflowRegistryResource,
):
    """The registered candidate's recipe retrained under several seeds (Ray tasks), each judged out of sample;
    at the seeds' 25th percentile it must beat equal-weight buy-and-hold and validation's allocator."""
    if candidate_leaderboard.dagster_run_id != registered_model.leaderboard_run_id:
        # The yardsticks must come from the board that picked the version, not from another run's.
        raise dg.Failure(
            description=f"seed_sweep: candidate_leaderboard is from run {candidate_leaderboard.dagster_run_id}, "
            f"but version {registered_model.version} was picked from the leaderboard of run "
            f"{registered_model.leaderboard_run_id}"
        )
    recipe = registered_model.agent_config
    if config.timesteps:
        recipe = replace(recipe, total_timesteps=config.timesteps)
    env_spec = registered_model.env_spec
    periods = [agent_market(trained_agent, learned_features, env_spec, p) for p in PERIODS]
    algorithm = registered_model.algorithm
    seeds = config.to_domain().seeds(registered_model.seed)
    tasks = [
        SeedTask(algorithm, seed, recipe, env_spec, *periods, candidate=registered_model.candidate)
        for seed in seeds
    ]
    context.log.info(
        f"seed sweep: {registered_model.candidate} over {len(tasks)} seeds {'on Ray' if config.use_ray else 'in turn'}"
    )
    outcomes = run_seed_sweep(tasks, use_ray=config.use_ray)
    for outcome in outcomes:
        model_registry.log_trial(
            f"seed_sweep_{algorithm}_seed_{outcome.seed}",
            params={"algorithm": algorithm, "seed": outcome.seed, "candidate_run": registered_model.run_id},
            metrics=outcome.trial_metrics(),
            kind="seed_sweep",
            curves={"train_mean_reward_per_step": list(outcome.learning_curve)},
        )
    table = seed_table(outcomes)
    stats = distribution(table)
    n_trials = max(model_registry.trial_count(), 1)
    candidate = next(o for o in outcomes if o.seed == registered_model.seed)
    deflated = deflated_sharpe_ratio(candidate.test_returns, n_trials, per_period_sharpe_variance(outcomes))
    p25 = float(stats.loc["test_sharpe", "p25"])
    leaderboard = candidate_leaderboard
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
    if config.must_beat_yardsticks:
        gate += tuple(
            yardstick_gate(
                registered_model.candidate,
                p25,
                len(outcomes),
                leaderboard.benchmark_test_sharpe,
                leaderboard.allocator_pick,
                leaderboard.allocator_test_sharpe,
            )
        )
    report = SeedSweepReport(
        registered_model.version, context.op_execution_context.run_id, table, stats, n_trials, deflated, gate
    )
    record = report.gate_record()
    model_registry.record_gate(record, checks=gate)
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
        metadata=readable(
            {
                "seeds": markdown_table(table.to_dict(orient="records")),
                "distribution": dg.MetadataValue.md(stats.to_markdown(floatfmt=".3f")),
                "deflated_sharpe": deflated,
                "trials": n_trials,
                **_plots("sharpe_per_seed", png, trained_agent.run_id, "seed_sweep.png", "Sharpe per seed"),
                **_bound_to(record),
                **_run_links(trained_agent.run_id, registered_model.name, registered_model.version),
            }
        ),
    )
    yield from _check_results(record, gate)
    checked = {result.name for result in gate}
    for name in ("p25_beats_buy_and_hold", "p25_beats_allocator"):
        if name not in checked:
            reason = (
                "not required by the seed-sweep settings"
                if not config.must_beat_yardsticks
                else "no classical allocator on the leaderboard"
            )
            yield dg.AssetCheckResult(
                check_name=name, passed=True, description=reason, metadata=_bound_to(record)
            )


class PromotionSettings(dg.Config):
    """Thresholds of the promotion gate (roadmap targets by default: :class:`PromotionThresholds`)."""

    min_sharpe: float = default_of(PromotionThresholds, "min_sharpe")
    max_drawdown: float = default_of(PromotionThresholds, "max_drawdown")
    max_var_95: float = default_of(PromotionThresholds, "max_var_95")
    must_beat_buy_and_hold: bool = default_of(PromotionThresholds, "must_beat_buy_and_hold")

    def to_domain(self) -> PromotionThresholds:
        return PromotionThresholds(**self.model_dump())


@dataclass(frozen=True)
class BacktestReport:
    """What the test period showed for one registered version.

    :param dagster_run_id: the run that judged the version
    """

    step: ClassVar[str] = "backtest"
    model_name: str
    version: str
    dagster_run_id: str
    equity: pd.Series
    benchmark_equity: pd.Series
    metrics: PerformanceMetrics
    benchmark_metrics: PerformanceMetrics
    total_cost: float
    trades: int
    gate: tuple[GateResult, ...]
    record: BacktestRecord | None = None

    @property
    def promotable(self) -> bool:
        return all(result.passed for result in self.gate)

    def gate_record(self) -> GateRecord:
        return GateRecord.of(self.step, self.version, self.dagster_run_id, self.gate)


@dg.multi_asset(
    outs={
        "backtest": dg.AssetOut(
            group_name="evaluation",
            description="Equity of the registered version over the unseen test period after costs, "
            "against equal-weight buy-and-hold.",
        ),
        "performance_attribution": dg.AssetOut(
            group_name="evaluation",
            description="Per-asset PnL of the out-of-sample backtest, gross and net of commission, spread and impact.",
        ),
    },
    compute_kind="backtest",
    check_specs=[
        dg.AssetCheckSpec(name=name, asset="backtest", description=text) for name, text in GATE_CHECKS.items()
    ],
)
def backtest(
    context: dg.AssetExecutionContext,
    config: PromotionSettings,
    registered_model: RegisteredCandidate,
    trained_agent: TrainedAgent,
    learned_features: DatasetSplits,
    market_regimes: MarketRegimes,
    model_registry: MlflowRegistryResource,
):
    """Backtest the registered version out of sample, split its figures by market regime against buy-and-hold,
    and attribute its PnL; the gate checks judge the backtest.

    Both come from one step so that the attribution is stored even when the gate fails.
    """
    policy = model_registry.load_policy(registered_model.version)
    env_spec = registered_model.env_spec
    test = agent_market(trained_agent, learned_features, env_spec, "test")
    result = run_backtest(policy, test, env_spec)
    gate = tuple(evaluate_gate(result.metrics, result.benchmark_metrics, config.to_domain()))
    report = BacktestReport(
        model_name=registered_model.name,
        version=registered_model.version,
        dagster_run_id=context.op_execution_context.run_id,
        equity=result.equity,
        benchmark_equity=result.benchmark_equity,
        metrics=result.metrics,
        benchmark_metrics=result.benchmark_metrics,
        total_cost=result.total_cost,
        trades=result.trades,
        gate=gate,
        record=result.record,
    )
    png = equity_curve_png(
        {
            f"{registered_model.name} v{registered_model.version}": result.equity,
            BUY_AND_HOLD: result.benchmark_equity,
        },
        f"Out-of-sample test {learned_features.split.test_start.date()} .. {learned_features.split.test_end.date()}",
        benchmark=BUY_AND_HOLD,
    )
    comparison = [
        {"metric": key, "agent": value, "buy_and_hold": result.benchmark_metrics.as_dict()[key]}
        for key, value in result.metrics.as_dict().items()
    ]
    # Each test-day return under the regime filtered at the close before it (the decision's regime).
    by_regime = compare_by_regime(
        {"agent": result.equity, "buy_and_hold": result.benchmark_equity},
        market_regimes.frame["regime"],
        market_regimes.config.n_regimes,
    ).to_dict(orient="records")
    metric_prefix = {"agent": "test", "buy_and_hold": "test_buy_and_hold"}
    regime_sharpes = {
        f"{metric_prefix[row['curve']]}_sharpe_regime_{row['regime']}": row["sharpe"]
        for row in by_regime
        if pd.notna(row["sharpe"])  # a regime the test period never saw has no Sharpe
    }
    model_registry.log_evaluation(
        registered_model.run_id,
        metrics={
            **{f"test_{k}": v for k, v in result.metrics.as_dict().items()},
            **{f"test_buy_and_hold_{k}": v for k, v in result.benchmark_metrics.as_dict().items()},
            "test_total_cost": result.total_cost,
            **regime_sharpes,
        },
        files={"test_equity_curve.png": png},
        tables={
            "test_by_regime.json": by_regime,
            MODEL_CARD_FACTS_FILE: model_card_facts(
                registered_model.candidate,
                registered_model.algorithm,
                registered_model.seed,
                env_spec,
                learned_features,
                trained_agent.feature_columns,
                trained_agent.forecaster,
                trained_agent.data_sha256,
                GATE_STEPS,
            ),
        },
    )
    # Tearsheet and trade log in the version's run; the gate record, model card and description follow below.
    tearsheet = log_tearsheet(
        result,
        test,
        f"{registered_model.name} v{registered_model.version} · test {test.dates[0].date()}..{test.dates[-1].date()}",
        registered_model.run_id,
        model_registry,
    )
    verdict = (
        "promotable"
        if report.promotable
        else "rejected: " + "; ".join(r.description for r in gate if not r.passed)
    )
    model_registry.set_version_tags(registered_model.version, {"promotion_gate": verdict})
    record = report.gate_record()
    model_registry.record_gate(record, checks=gate)
    context.log.info(f"{registered_model.name} v{registered_model.version}: {verdict}")

    yield dg.Output(
        report,
        output_name="backtest",
        metadata={
            "model": f"{registered_model.name} v{registered_model.version}",
            "sharpe": number(result.metrics.sharpe),
            "max_drawdown": number(result.metrics.max_drawdown),
            "buy_and_hold_sharpe": number(result.benchmark_metrics.sharpe),
            "total_cost": number(result.total_cost),
            "trades": result.trades,
            "metrics": markdown_table(comparison),
            "by_regime": markdown_table(by_regime),
            **_plots(
                "equity_curve", png, registered_model.run_id, "test_equity_curve.png", "out-of-sample equity"
            ),
            **tearsheet,
            **_bound_to(record),
            **_run_links(registered_model.run_id, registered_model.name, registered_model.version),
        },
    )
    if result.record is not None:
        yield _attribution_output(result, test, registered_model, model_registry)
    yield from _check_results(record, gate)
    if not config.must_beat_buy_and_hold:
        yield dg.AssetCheckResult(
            check_name="beats_buy_and_hold",
            passed=True,
            description="not required by the promotion settings",
            metadata=_bound_to(record),
        )


class PromotionDecision(TypedDict):
    """What ``champion_model`` decided on the version this run registered.

    :param promoted: whether it moved alias ``champion`` to the version
    :param verdict: ``promoted`` or ``not promoted``
    :param reasons: why not: each failed criterion with its figure and threshold, or the evidence that does not
        bind the version to this run; empty when promoted
    :param champion: the version holding ``champion`` after the step (``None``: no version holds it)
    :param previous: the champion this promotion replaced (``None``: it replaced none, or nothing moved)
    """

    model_name: str
    version: str
    promoted: bool
    verdict: str
    reasons: list[str]
    champion: str | None
    previous: str | None
    dagster_run_id: str


PROMOTED, NOT_PROMOTED = "promoted", "not promoted"


def _refusal_reasons(
    reports: tuple[BacktestReport, StressReport, SeedSweepReport],
    registered: RegisteredCandidate,
    run_id: str,
) -> list[str]:
    """Why the gate steps' outputs refuse the promotion. Evidence of another version or run comes first and
    alone, since its figures are not this version's; else each criterion a step failed, with its figures."""
    evidence = [report.gate_record() for report in reports]
    problems = binding_problems(registered.version, run_id, registered.dagster_run_id, evidence, GATE_STEPS)
    return problems or [line for report in reports for line in failed_criteria(report.step, report.gate)]


@dg.asset(group_name="evaluation", compute_kind="mlflow")
def champion_model(
    context: dg.AssetExecutionContext,
    backtest: BacktestReport,
    stress_tests: StressReport,
    seed_sweep: SeedSweepReport,
    registered_model: RegisteredCandidate,
    model_registry: MlflowRegistryResource,
) -> dg.Output[dict]:  # a PromotionDecision: Dagster's type check cannot test a TypedDict
    """This run's promotion verdict on the version it registered, and the version holding alias ``champion``
    after it. The alias moves only when every gate step of this run passed: both the steps' outputs and their
    records in the registry must say so. A rejection completes the step as ``not promoted`` with every reason."""
    run_id, name, version = (
        context.op_execution_context.run_id,
        registered_model.name,
        registered_model.version,
    )
    # The outputs first: they guard a materialization that reads stored outputs of another run too.
    reasons = _refusal_reasons((backtest, stress_tests, seed_sweep), registered_model, run_id)
    previous = None
    if not reasons:
        try:
            previous = model_registry.promote(version, run_id, GATE_STEPS)
        except PromotionRefused as refused:
            reasons = [f"the registry's records refuse it: {refused}"]
    decision = PromotionDecision(
        model_name=name,
        version=version,
        promoted=not reasons,
        verdict=NOT_PROMOTED if reasons else PROMOTED,
        reasons=reasons,
        champion=model_registry.version_for_alias(CHAMPION_ALIAS),
        previous=previous,
        dagster_run_id=run_id,
    )
    if reasons:
        context.log.info(
            f"{name} v{version} {NOT_PROMOTED}; {CHAMPION_ALIAS} stays {_version_text(decision['champion'])}: "
            + "; ".join(reasons)
        )
    else:
        context.log.info(f"{name} v{version} is now {CHAMPION_ALIAS} (was {_version_text(previous)})")
    return dg.Output(decision, metadata=_decision_metadata(decision))


def _version_text(version: str | None) -> str:
    return f"v{version}" if version is not None else "none"


def _decision_metadata(decision: PromotionDecision) -> dict[str, object]:
    """The verdict as the Dagster UI shows it: the outcome first, the reasons as a list, links to the versions."""
    name, champion = decision["model_name"], decision["champion"]
    reasons = "\n".join(f"- {markdown_cell(reason)}" for reason in decision["reasons"])
    metadata: dict[str, object] = {
        "verdict": dg.MetadataValue.text(decision["verdict"]),
        "promoted": dg.MetadataValue.bool(decision["promoted"]),
        "model": dg.MetadataValue.text(f"{name} v{decision['version']}"),
        "reasons": dg.MetadataValue.md(reasons or "every gate check of this run passed"),
        "champion": dg.MetadataValue.text(_version_text(champion)),
        "previous": dg.MetadataValue.text(_version_text(decision["previous"])),
        "other_candidates": dg.MetadataValue.text(SELECTION_RULE),
        "dagster_run_id": decision["dagster_run_id"],
        "mlflow_model_version": mlflow_version_link(name, decision["version"]),
    }
    if champion is not None:
        metadata["mlflow_champion_version"] = mlflow_version_link(name, champion)
    return metadata


def _attribution_output(
    result: BacktestResult,
    test: MarketArrays,
    registered_model: RegisteredCandidate,
    model_registry: MlflowRegistryResource,
) -> dg.Output:
    # The backtest's own arrays: their carried closes value every position (no NaN on a cell without a bar).
    table = attribute_pnl(result.record, test)
    summary = attribution_summary(table, float(result.equity.iloc[0]), result.benchmark_metrics.total_return)
    png = grouped_bars_png(
        table[["gross_pnl", "net_pnl"]], "Out-of-sample PnL per asset, before and after costs", "PnL"
    )
    model_registry.log_evaluation(
        registered_model.run_id,
        metrics={f"attribution_{k}": v for k, v in summary.items() if pd.notna(v)},
        files={"performance_attribution.png": png},
        tables={"performance_attribution.json": table.reset_index(names="tic").to_dict(orient="records")},
    )
    return dg.Output(
        table,
        output_name="performance_attribution",
        metadata={
            "per_asset": dg.MetadataValue.md(table.to_markdown(floatfmt=",.0f")),
            "summary": markdown_table([summary]),
            "pnl_per_asset": png_metadata(png),
        },
    )


class CandidateGateSettings(dg.Config):
    """The gate applied to every candidate (the same criteria as the registered candidate's blocking checks;
    defaults: :class:`CandidateThresholds`)."""

    min_sharpe: float = default_of(CandidateThresholds, "min_sharpe")
    min_p25_sharpe: float = default_of(CandidateThresholds, "min_p25_sharpe")
    max_drawdown: float = default_of(CandidateThresholds, "max_drawdown")
    min_deflated_sharpe: float = default_of(CandidateThresholds, "min_deflated_sharpe")
    must_beat_buy_and_hold: bool = default_of(CandidateThresholds, "must_beat_buy_and_hold")

    def to_domain(self) -> CandidateThresholds:
        return CandidateThresholds(**self.model_dump())


@dataclass(frozen=True)
class CandidateVerdicts:
    """The gate's verdict on every zoo agent and ensemble.

    :param promotion: per candidate, why it was or was not the version gated for promotion (:func:`promotion_note`)
    """

    verdicts: tuple[CandidateVerdict, ...]
    benchmark_sharpe: float
    n_trials: int
    promotion: dict[str, str] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([{**v.row(), "promotion": self.promotion.get(v.name, "")} for v in self.verdicts])


def _promotion_notes(names: list[str], leaderboard: LeaderboardReport) -> dict[str, str]:
    """Why each candidate was or was not the one registered and gated for promotion."""
    figures = leaderboard.table.set_index("candidate")
    pick = leaderboard.pick
    pick_p25 = float(figures.loc[pick, "validation_sharpe_p25"]) if pick is not None else float("nan")
    return {
        name: promotion_note(
            name,
            str(figures.loc[name, "kind"]),
            pick,
            float(figures.loc[name, "validation_sharpe_p25"]),
            pick_p25,
        )
        for name in names
    }


@dg.asset(group_name="evaluation", compute_kind="pandas")
def candidate_verdicts(
    context: dg.AssetExecutionContext,
    config: CandidateGateSettings,
    candidate_leaderboard: LeaderboardReport,
    agent_zoo: AgentZooReport,
    agent_ensemble: EnsembleReport,
    model_registry: MlflowRegistryResource,
) -> dg.Output[CandidateVerdicts]:
    """Every candidate (each zoo agent over its seeds, both ensembles) judged by the promotion gate's criteria,
    on the leaderboard's test figures (representative run, runs' quantiles, worst drawdown, buy-and-hold)."""
    thresholds = config.to_domain()
    board = candidate_leaderboard.board
    figures = candidate_leaderboard.table.set_index("candidate")
    benchmark_sharpe = candidate_leaderboard.benchmark_test_sharpe
    # Deflated over the registry's trials and the zoo's runs as before, not like the leaderboard's column (at
    # least every board run as trials, the variance over allocators, ensembles and the benchmark too).
    n_trials = max(model_registry.trial_count(), 1)
    variance = per_period_sharpe_variance(agent_zoo.split_outcomes())
    zoo = dict.fromkeys(o.candidate for o in agent_zoo.split_outcomes())
    names = [*zoo, "weighted_ensemble", "rolling_selection"]
    verdicts = []
    for name in names:
        representative, row = board.representative(name).test, figures.loc[name]
        verdicts.append(
            judge_figures(
                name,
                runs=int(row["runs"]),
                sharpe=representative.sharpe,
                p25_sharpe=row["test_sharpe_p25"],
                median_sharpe=row["test_sharpe_median"],
                worst_drawdown=row["test_max_drawdown_worst"],
                deflated_sharpe=deflated_sharpe_ratio(representative.returns, n_trials, variance),
                benchmark_sharpe=benchmark_sharpe,
                thresholds=thresholds,
            )
        )
    result = CandidateVerdicts(
        tuple(verdicts), benchmark_sharpe, n_trials, _promotion_notes(names, candidate_leaderboard)
    )
    table = result.table()
    model_registry.set_version_tags(
        agent_ensemble.version.version,
        {"promotion_gate": table.set_index("candidate").loc["weighted_ensemble", "verdict"]},
        model_name=ENSEMBLE_MODEL_NAME,
    )
    passing = table.loc[table["verdict"] == "pass", "candidate"].tolist()
    context.log.info(f"candidates passing the gate: {passing or 'none'}")
    return dg.Output(
        result,
        metadata=readable(
            {
                "verdicts": markdown_table(table.to_dict(orient="records")),
                "buy_and_hold_sharpe": benchmark_sharpe,
                "trials": n_trials,
                "passing": dg.MetadataValue.text(", ".join(passing) or "none"),
                "promotion_rule": dg.MetadataValue.text(SELECTION_RULE),
            }
        ),
    )
