"""Stage 4b: every candidate on one leaderboard — the trained recipe, the zoo's agents over seeds, the ensembles,
the classical allocators and equal-weight buy-and-hold — and the registration of the candidate validation picks.

The test period only reports; validation alone chooses the registered candidate and the allocator it must beat.
"""

from dataclasses import dataclass, field
from functools import cached_property

import dagster as dg
import mlflow
import pandas as pd

from resources.mlflow_registry import (
    CHALLENGER_ALIAS,
    REGISTERED_BY_TAG,
    MlflowRegistryResource,
    RegisteredVersion,
)
from trading_assets.config_defaults import default_of
from trading_assets.metadata import (
    markdown_table,
    mlflow_plot,
    mlflow_run_link,
    mlflow_version_link,
    png_metadata,
)
from trading_assets.training import (
    MODEL_REQUIREMENTS,
    SPLIT_WINDOW,
    AgentZooReport,
    EnsembleReport,
    TrainedAgent,
    decision_spec_for,
    observation_example,
)
from trading_core.agents.pyfunc import log_agent_model
from trading_core.agents.zoo import AgentConfig
from trading_core.allocators.config import ALLOCATORS, AllocatorConfig
from trading_core.allocators.schedule import AllocationSchedule
from trading_core.data.schema import frame_fingerprint
from trading_core.data.splits import DatasetSplits
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.allocator_backtests import backtest_allocators
from trading_core.evaluation.backtester import buy_and_hold_record, run_backtests
from trading_core.evaluation.leaderboard import BENCHMARK, CandidateRun, Leaderboard, PeriodFigures
from trading_core.evaluation.plots import equity_curve_png, grouped_bars_png
from trading_core.evaluation.sizing_overlays import SizedCandidates
from trading_core.market.arrays import MarketArrays
from trading_core.regimes.history import MarketRegimes
from trading_core.runtime.provenance import code_version, pinned_requirements
from trading_core.sectors import with_sectors


def recipe_name(agent: TrainedAgent) -> str:
    """The trained recipe's name on the leaderboard (the zoo's agents are named by their algorithm alone)."""
    return f"{agent.algorithm.lower()}_recipe"


class AllocatorSettings(dg.Config):
    """Which classical allocators run and how they fit and rebalance (defaults: :class:`AllocatorConfig`)."""

    methods: list[str] = list(ALLOCATORS)
    lookback: int = default_of(AllocatorConfig, "lookback")
    rebalance_every: int = default_of(AllocatorConfig, "rebalance_every")
    min_history: int = default_of(AllocatorConfig, "min_history")
    invest: float = default_of(AllocatorConfig, "invest")
    covariance: str = default_of(AllocatorConfig, "covariance")
    sector_top: int = default_of(AllocatorConfig, "sector_top")

    def to_domain(self) -> AllocatorConfig:
        """The shared settings; the method is set per allocator."""
        return AllocatorConfig(**self.model_dump(exclude={"methods"}))


@dataclass(frozen=True)
class AllocatorReport:
    """Every classical allocator on validation and test, traded like the agents (same costs, risk manager).

    :param config: the settings every method shared
    :param schedules: per method and period (``validation``, ``test``) the fitted weights, so consumers that
        trade them differently (the sizing layer) do not refit
    """

    runs: tuple[CandidateRun, ...]
    test_equity: dict[str, pd.Series]
    fallbacks: dict[str, int]
    config: AllocatorConfig = AllocatorConfig()
    schedules: dict[str, dict[str, AllocationSchedule]] = field(default_factory=dict)


def allocator_market(agent: TrainedAgent, splits: DatasetSplits, sectors: pd.DataFrame) -> MarketArrays:
    """The full history the allocators fit and trade on: the agents' universe with each ticker's sector."""
    return with_sectors(agent.observation_market(splits), sectors)


@dg.asset(group_name="selection", compute_kind="skfolio")
def classical_allocators(
    context: dg.AssetExecutionContext,
    config: AllocatorSettings,
    trained_agent: TrainedAgent,
    learned_features: DatasetSplits,
    sector_map: pd.DataFrame,
) -> dg.Output[AllocatorReport]:
    """Equal weight, inverse volatility, minimum variance, risk parity, HRP, shrunk mean-variance, momentum and
    sector momentum, fit on trailing windows only and rebalanced on a schedule, backtested on validation and test
    after costs."""
    unknown = sorted(set(config.methods) - set(ALLOCATORS))
    if unknown:
        raise ValueError(
            f"classical_allocators.methods: unknown {unknown}; choose from {', '.join(ALLOCATORS)}"
        )
    full = allocator_market(trained_agent, learned_features, sector_map)
    split, base = learned_features.split, config.to_domain()
    methods = tuple(config.methods)
    spec = trained_agent.env_spec
    validation = backtest_allocators(full, split.validation_start, split.validation_end, spec, base, methods)
    test = backtest_allocators(full, split.test_start, split.test_end, spec, base, methods)
    runs = tuple(
        CandidateRun(
            method,
            "allocator",
            None,
            PeriodFigures.of_record(validation[method].record),
            PeriodFigures.of_record(test[method].record),
        )
        for method in methods
    )
    fallbacks = {method: len(test[method].schedule.fallbacks) for method in methods}
    rows = [
        {
            "allocator": method,
            "validation_sharpe": validation[method].metrics.sharpe,
            "test_sharpe": test[method].metrics.sharpe,
            "test_return": test[method].metrics.total_return,
            "test_max_drawdown": test[method].metrics.max_drawdown,
            "test_turnover": test[method].metrics.turnover,
            "fit_seconds": test[method].fit_seconds,
            "fallbacks": fallbacks[method],
        }
        for method in methods
    ]
    context.log.info(f"classical allocators: {', '.join(methods)} on validation and test")
    png = equity_curve_png(
        {method: test[method].record.equity for method in methods},
        f"Classical allocators, test {split.test_start.date()} .. {split.test_end.date()}",
    )
    schedules = {
        method: {"validation": validation[method].schedule, "test": test[method].schedule}
        for method in methods
    }
    report = AllocatorReport(
        runs, {method: test[method].record.equity for method in methods}, fallbacks, base, schedules
    )
    return dg.Output(
        report,
        metadata={"allocators": markdown_table(rows), "test_equity": png_metadata(png)},
    )


@dataclass(frozen=True)
class LeaderboardReport:
    """The leaderboard and validation's picks: the candidate to register and the allocator it must beat.

    :param dagster_run_id: the run that ranked it (the seed sweep's yardsticks must come from the same board)
    """

    board: Leaderboard
    pick: str | None
    allocator_pick: str | None
    dagster_run_id: str

    @cached_property
    def table(self) -> pd.DataFrame:
        return self.board.table()

    @property
    def benchmark_test_sharpe(self) -> float:
        return self.board.representative(BENCHMARK).test.sharpe

    @property
    def allocator_test_sharpe(self) -> float | None:
        if self.allocator_pick is None:
            return None
        return self.board.test_p25(self.allocator_pick)


def _ensemble_runs(ensemble: EnsembleReport) -> list[CandidateRun]:
    """Both ensembles on test; their weights and choices are fit on validation, so they have no validation run."""
    return [
        CandidateRun(name, "ensemble", None, PeriodFigures.missing(), PeriodFigures.of_equity(equity))
        for name, equity in (
            ("weighted_ensemble", ensemble.weighted_equity),
            ("rolling_selection", ensemble.rolling_equity),
        )
    ]


@dg.asset(group_name="selection", compute_kind="pandas")
def candidate_leaderboard(
    context: dg.AssetExecutionContext,
    trained_agent: TrainedAgent,
    agent_zoo: AgentZooReport,
    agent_ensemble: EnsembleReport,
    classical_allocators: AllocatorReport,
    sized_candidates: SizedCandidates,
    market_regimes: MarketRegimes,
    learned_features: DatasetSplits,
    model_registry: MlflowRegistryResource,
) -> dg.Output[LeaderboardReport]:
    """Every candidate on validation and test after costs: Sharpe over seeds (median, 25th percentile), return,
    drawdown, days halted, turnover, cost drag and deflated Sharpe with every trial counted; validation's picks."""
    env_spec = trained_agent.env_spec
    validation, test = (
        trained_agent.observation_market(learned_features, period) for period in ("validation", "test")
    )
    recipe = model_registry.load_logged_policy(trained_agent.model_uri)
    (recipe_validation,) = run_backtests([recipe], validation, env_spec)
    (recipe_test,) = run_backtests([recipe], test, env_spec)
    runs = [
        CandidateRun(
            recipe_name(trained_agent),
            "agent",
            trained_agent.seed,
            PeriodFigures.of_result(recipe_validation),
            PeriodFigures.of_result(recipe_test),
        ),
        *(outcome.candidate_run() for outcome in agent_zoo.split_outcomes()),
        *_ensemble_runs(agent_ensemble),
        *classical_allocators.runs,
        *sized_candidates.runs,
        CandidateRun(
            BENCHMARK,
            "benchmark",
            None,
            PeriodFigures.of_record(buy_and_hold_record(validation, env_spec.simulation)),
            PeriodFigures.of_record(buy_and_hold_record(test, env_spec.simulation)),
        ),
    ]
    board = Leaderboard(tuple(runs), model_registry.trial_count(), regimes=market_regimes.frame["regime"])
    report = LeaderboardReport(
        board, board.pick(), board.pick_allocator(), context.op_execution_context.run_id
    )
    table = report.table
    context.log.info(
        f"leaderboard: {len(board.candidates())} candidates, {len(runs)} runs; validation picks "
        f"{report.pick} to register and {report.allocator_pick} as the allocator to beat"
    )
    png = grouped_bars_png(
        table.set_index("candidate")[["validation_sharpe_p25", "test_sharpe_p25", "test_sharpe_median"]],
        "Sharpe ratio per candidate after costs (25th percentile and median over runs)",
        "Sharpe",
    )
    model_registry.log_evaluation(
        trained_agent.run_id,
        metrics={
            f"leaderboard_{row['candidate']}_{column}": row[column]
            for row in table.to_dict(orient="records")
            for column in ("validation_sharpe_p25", "test_sharpe_p25", "test_sharpe_median")
            if pd.notna(row[column])
        },
        files={"leaderboard.png": png},
        tables={"leaderboard.json": table.to_dict(orient="records")},
    )
    return dg.Output(
        report,
        metadata={
            "leaderboard": dg.MetadataValue.table(
                records=[
                    dg.TableRecord({k: _cell(v) for k, v in row.items()})
                    for row in table.to_dict(orient="records")
                ]
            ),
            "leaderboard_markdown": markdown_table(table.to_dict(orient="records")),
            "registered_pick": dg.MetadataValue.text(report.pick or "none"),
            "allocator_pick": dg.MetadataValue.text(report.allocator_pick or "none"),
            "dagster_run_id": report.dagster_run_id,
            "trials": board.n_trials,
            "sharpe_per_candidate": mlflow_plot(
                trained_agent.run_id, "evaluation/leaderboard.png", "Sharpe per candidate"
            ),
            "sharpe_per_candidate_embedded": png_metadata(png),
            "mlflow_run": mlflow_run_link(trained_agent.run_id),
        },
    )


def _cell(value: object) -> object:
    """A leaderboard value as a Dagster table cell: rounded floats, NaN and None as empty text."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return round(value, 4)
    return value


@dataclass(frozen=True)
class RegisteredCandidate:
    """The registry version of validation's pick, with the recipe that trained it (the seed sweep retrains it).

    :param model: the registry version
    :param candidate: its leaderboard name
    :param algorithm: the zoo algorithm
    :param seed: the training seed of the registered run
    :param agent_config: the recipe (algorithm, budget, hyperparameters)
    :param dagster_run_id: the run that registered it: only that run may promote it
    :param leaderboard_run_id: the run whose leaderboard picked it
    :param env_spec: the environment it trained in (a tilt candidate's action tilts a prior)
    """

    model: RegisteredVersion
    candidate: str
    algorithm: str
    seed: int
    agent_config: AgentConfig
    dagster_run_id: str
    leaderboard_run_id: str
    env_spec: EnvSpec = EnvSpec()

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def run_id(self) -> str:
        return self.model.run_id

    @property
    def source(self) -> str:
        return self.model.source


def _log_zoo_pick(
    report: LeaderboardReport,
    agent_zoo: AgentZooReport,
    trained_agent: TrainedAgent,
    splits: DatasetSplits,
    registry: MlflowRegistryResource,
) -> tuple[str, str, int, AgentConfig, str, EnvSpec]:
    """Log the zoo run validation picked as its own MLflow run with a pyfunc model: (model uri, run id, seed,
    recipe, algorithm, environment). The run is no new trial: the zoo already counted it."""
    seed = report.board.representative(report.pick).seed
    outcome = next(
        o
        for o in agent_zoo.outcomes
        if o.candidate == report.pick and o.seed == seed and o.window == SPLIT_WINDOW
    )
    policy = outcome.policy()
    env_spec = outcome.env_spec or trained_agent.env_spec
    with mlflow.start_run(
        experiment_id=registry.experiment_id(), run_name=f"registered_{report.pick}_seed_{seed}", nested=True
    ) as run:
        mlflow.log_params(
            {
                "algorithm": outcome.algorithm,
                "candidate": report.pick,
                "seed": seed,
                **{f"agent_{k}": v for k, v in policy.config.as_dict().items()},
                **{f"env_{k}": v for k, v in env_spec.describe().items()},
                "tickers": ",".join(splits.tickers),
            }
        )
        mlflow.set_tags(
            {
                "data_sha256": frame_fingerprint(splits.train),
                "code_version": code_version(),
                "dagster_asset": "registered_model",
                "cnn_lstm_model": trained_agent.forecaster or "none",
                **{f"data_{k}": v for k, v in splits.split.as_dict().items()},
            }
        )
        validation = report.board.representative(report.pick).validation
        mlflow.log_metrics(
            {
                "validation_sharpe": validation.sharpe,
                "validation_total_return": validation.total_return,
                "validation_max_drawdown": validation.max_drawdown,
            }
        )
        info = log_agent_model(
            policy,
            outcome.algorithm,
            decision_spec_for(splits, env_spec, trained_agent.forecaster),
            observation_example(splits, env_spec),
            pinned_requirements(MODEL_REQUIREMENTS),
        )
        run_id = run.info.run_id
    return info.model_uri, run_id, seed, policy.config, outcome.algorithm, env_spec


@dg.asset(group_name="selection", compute_kind="mlflow")
def registered_model(
    context: dg.AssetExecutionContext,
    candidate_leaderboard: LeaderboardReport,
    trained_agent: TrainedAgent,
    agent_zoo: AgentZooReport,
    learned_features: DatasetSplits,
    model_registry: MlflowRegistryResource,
) -> dg.Output[RegisteredCandidate]:
    """The candidate validation picks from the leaderboard, as a new registry version aliased ``challenger``."""
    report = candidate_leaderboard
    if report.pick is None:
        raise dg.Failure(description="the leaderboard has no registrable candidate (no RL agent ran)")
    if report.pick == recipe_name(trained_agent):
        model_uri, run_id = trained_agent.model_uri, trained_agent.run_id
        algorithm, seed = trained_agent.algorithm.lower(), trained_agent.seed
        recipe = trained_agent.ppo_config.as_agent_config()
        env_spec = trained_agent.env_spec
    else:
        model_uri, run_id, seed, recipe, algorithm, env_spec = _log_zoo_pick(
            report, agent_zoo, trained_agent, learned_features, model_registry
        )
    row = report.table.set_index("candidate").loc[report.pick]
    dagster_run_id = context.op_execution_context.run_id
    version = model_registry.register(
        model_uri,
        run_id,
        tags={
            REGISTERED_BY_TAG: dagster_run_id,
            "leaderboard_run_id": report.dagster_run_id,
            "algorithm": algorithm,
            "candidate": report.pick,
            "seed": str(seed),
            "data_sha256": trained_agent.data_sha256,
            "cnn_lstm_model": trained_agent.forecaster or "none",
            "code_version": code_version(),
            "leaderboard_validation_sharpe_p25": f"{row['validation_sharpe_p25']:.4f}",
            "test_period": f"{learned_features.split.test_start.date()}..{learned_features.split.test_end.date()}",
        },
    )
    model_registry.set_alias(version.version, CHALLENGER_ALIAS)
    context.log.info(
        f"{version.name} v{version.version}: {report.pick} seed {seed}, validation's pick (25th percentile "
        f"validation Sharpe {row['validation_sharpe_p25']:.2f})"
    )
    registered = RegisteredCandidate(
        version,
        report.pick,
        algorithm,
        seed,
        recipe,
        dagster_run_id=dagster_run_id,
        leaderboard_run_id=report.dagster_run_id,
        env_spec=env_spec,
    )
    return dg.Output(
        registered,
        metadata={
            "model_name": version.name,
            "version": version.version,
            "alias": CHALLENGER_ALIAS,
            "run_id": version.run_id,
            "candidate": report.pick,
            "seed": seed,
            "dagster_run_id": dagster_run_id,
            "mlflow_run": mlflow_run_link(version.run_id),
            "mlflow_model_version": mlflow_version_link(version.name, version.version),
        },
    )
