"""Stage 4b: the agent zoo (agents x seeds x windows on Ray), the ensembles built from it, the gate's verdict
on every candidate, and an optional hyperparameter search."""

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd

from resources.mlflow_registry import CHALLENGER_ALIAS, TRIAL_TAG, MlflowRegistryResource, RegisteredVersion
from trading_assets.features import DatasetSplits
from trading_assets.metadata import markdown_table, png_metadata
from trading_assets.training import TrainedAgent, decision_spec_for
from trading_core.agents.decision_spec import DecisionSpec
from trading_core.agents.ensemble import (
    WeightedEnsemblePolicy,
    rebalance_windows,
    rolling_selection,
    trade_selections,
)
from trading_core.agents.pyfunc import DECISION_SPEC_KEY, ENSEMBLE_ARTIFACT_KEY, EnsemblePolicyModel
from trading_core.agents.zoo import ALGORITHMS, DEFAULT_CONFIGS
from trading_core.backtest import run_backtest
from trading_core.backtester import buy_and_hold_record
from trading_core.data.schema import frame_fingerprint
from trading_core.envs.stock_trading import observation_at
from trading_core.market.data import MarketArrays
from trading_core.metrics import compute_metrics, daily_returns, deflated_sharpe_ratio
from trading_core.plots import equity_curve_png, grouped_bars_png
from trading_core.promotion import CandidateThresholds, CandidateVerdict, judge_candidate
from trading_core.provenance import code_version, pinned_requirements
from trading_core.seed_sweep import (
    SeedOutcome,
    grid_tasks,
    per_period_sharpe_variance,
    run_seed_sweep,
    seed_table,
)
from trading_core.tuning import search_hyperparameters
from trading_core.walk_forward import walk_forward_windows

ENSEMBLE_MODEL_NAME = "rl_trading_ensemble"
SPLIT_WINDOW = "split"


class AgentZooSettings(dg.Config):
    """Which agents, seeds and windows the zoo trains, and each run's budget."""

    algorithms: list[str] = list(ALGORITHMS)
    n_seeds: int = 2
    first_seed: int = 100
    timesteps: int = 4_000
    walk_forward_windows: int = 0
    window_test_dates: int = 126
    use_ray: bool = True


@dataclass(frozen=True)
class AgentZooReport:
    """Every run of the zoo: one row per agent, seed and window, with the trained policies kept."""

    table: pd.DataFrame
    outcomes: tuple[SeedOutcome, ...]

    def split_outcomes(self) -> list[SeedOutcome]:
        return [o for o in self.outcomes if o.window == SPLIT_WINDOW]

    def best_by_validation(self) -> dict[str, SeedOutcome]:
        """Per algorithm, the seed validation picks (the test period never chooses)."""

        def score(outcome: SeedOutcome) -> float:
            return outcome.validation_sharpe if np.isfinite(outcome.validation_sharpe) else -np.inf

        best: dict[str, SeedOutcome] = {}
        for outcome in self.split_outcomes():
            current = best.get(outcome.algorithm)
            if current is None or score(outcome) > score(current):
                best[outcome.algorithm] = outcome
        return best


def _walk_forward_periods(
    frame: pd.DataFrame, n_windows: int, test_dates: int, validation_dates: int
) -> dict[str, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]]:
    """(train, validation, test) per walk-forward window; validation is the tail of each training window."""
    periods = {}
    for number, window in enumerate(walk_forward_windows(frame["date"], n_windows, test_dates), start=1):
        train_dates = frame["date"][frame["date"].between(window.train_start, window.train_end)].unique()
        cut = pd.Timestamp(np.sort(train_dates)[-validation_dates])
        periods[f"window_{number}"] = tuple(
            part.reset_index(drop=True)
            for part in (
                frame[(frame["date"] >= window.train_start) & (frame["date"] < cut)],
                frame[(frame["date"] >= cut) & (frame["date"] <= window.train_end)],
                frame[frame["date"].between(window.test_start, window.test_end)],
            )
        )
    return periods


@dg.asset(group_name="training", compute_kind="ray")
def agent_zoo(
    context: dg.AssetExecutionContext,
    config: AgentZooSettings,
    learned_features: DatasetSplits,
    trained_agent: TrainedAgent,
    model_registry: MlflowRegistryResource,
) -> dg.Output[AgentZooReport]:
    """PPO, A2C, SAC, TD3, DDPG and QR-DQN under several seeds (and walk-forward windows), trained as Ray tasks."""
    frames = [
        trained_agent.observation_frame(f)
        for f in (learned_features.train, learned_features.validation, learned_features.test)
    ]
    periods = {SPLIT_WINDOW: tuple(frames)}
    if config.walk_forward_windows:
        full = trained_agent.observation_frame(learned_features.full)
        validation_dates = frames[1]["date"].nunique()
        periods.update(
            _walk_forward_periods(
                full, config.walk_forward_windows, config.window_test_dates, validation_dates
            )
        )
    configs = {a: replace(DEFAULT_CONFIGS[a], total_timesteps=config.timesteps) for a in config.algorithms}
    seeds = range(config.first_seed, config.first_seed + config.n_seeds)
    tasks = grid_tasks(configs, seeds, periods, trained_agent.env_spec, keep_policies=True)
    context.log.info(
        f"agent zoo: {len(configs)} agents x {config.n_seeds} seeds x {len(periods)} windows = {len(tasks)} "
        f"runs {'on Ray' if config.use_ray else 'in turn'}"
    )
    outcomes = run_seed_sweep(tasks, use_ray=config.use_ray)
    for outcome in outcomes:
        model_registry.log_trial(
            f"agent_zoo_{outcome.algorithm}_seed_{outcome.seed}_{outcome.window}",
            params={
                "algorithm": outcome.algorithm,
                "seed": outcome.seed,
                "window": outcome.window,
                "total_timesteps": config.timesteps,
                "candidate_run": trained_agent.run_id,
            },
            metrics={
                "validation_sharpe": outcome.validation_sharpe,
                "test_sharpe": outcome.test_sharpe,
                "test_max_drawdown": outcome.test_max_drawdown,
            },
            kind="agent_zoo",
        )
    table = seed_table(outcomes)
    report = AgentZooReport(table, tuple(outcomes))
    split = table[table["window"] == SPLIT_WINDOW]
    per_agent = split.groupby("algorithm")["test_sharpe"].describe()[["min", "25%", "50%", "max"]]
    png = grouped_bars_png(
        split.assign(run=split["algorithm"] + " s" + split["seed"].astype(str)).set_index("run")[
            ["validation_sharpe", "test_sharpe"]
        ],
        "Sharpe ratio per agent and seed",
        "Sharpe",
    )
    return dg.Output(
        report,
        metadata={
            "runs": markdown_table(table.to_dict(orient="records")),
            "test_sharpe_by_agent": dg.MetadataValue.md(per_agent.to_markdown(floatfmt=".3f")),
            "sharpe_per_run": png_metadata(png),
        },
    )


class EnsembleSettings(dg.Config):
    """Softmax temperature of the weighted ensemble and FinRL's rolling-selection windows."""

    temperature: float = 1.0
    rebalance_dates: int = 63
    validation_dates: int = 63


@dataclass(frozen=True)
class EnsembleReport:
    """The weighted ensemble (registered) and FinRL's rolling selection, each traded over the test period."""

    weights: dict[str, float]
    validation_sharpes: dict[str, float]
    weighted_equity: pd.Series
    rolling_equity: pd.Series
    rolling_choices: pd.DataFrame
    version: RegisteredVersion


def _log_ensemble(
    ensemble: WeightedEnsemblePolicy,
    example: pd.DataFrame,
    splits: DatasetSplits,
    decision_spec: DecisionSpec,
    registry: MlflowRegistryResource,
) -> RegisteredVersion:
    """Log the ensemble as one pyfunc model (every member inside) in its own run and register it."""
    experiment_id = registry.experiment_id()
    with (
        tempfile.TemporaryDirectory() as folder,
        mlflow.start_run(experiment_id=experiment_id, run_name="weighted_ensemble", nested=True) as run,
    ):
        ensemble.save(Path(folder) / "ensemble")
        mlflow.log_params({"temperature": ensemble.temperature, "members": ",".join(ensemble.members)})
        mlflow.log_metrics({k.replace("/", "_"): v for k, v in ensemble.describe().items()})
        mlflow.set_tags(
            {
                "data_sha256": frame_fingerprint(splits.train),
                "code_version": code_version(),
                TRIAL_TAG: "ensemble",
                **{f"data_{k}": v for k, v in splits.split.as_dict().items()},
            }
        )
        info = mlflow.pyfunc.log_model(
            name="ensemble",
            python_model=EnsemblePolicyModel(),
            artifacts={
                ENSEMBLE_ARTIFACT_KEY: str(Path(folder) / "ensemble"),
                DECISION_SPEC_KEY: str(decision_spec.save(Path(folder) / "decision_spec.pkl")),
            },
            signature=mlflow.models.infer_signature(
                example, ensemble.predict(example.to_numpy(dtype=np.float32))[0]
            ),
            input_example=example,
            pip_requirements=pinned_requirements(
                ("stable-baselines3", "sb3-contrib", "torch", "gymnasium", "numpy", "pandas", "cloudpickle")
            ),
        )
        run_id = run.info.run_id
    version = registry.register(
        info.model_uri, run_id, tags={"members": ",".join(ensemble.members)}, model_name=ENSEMBLE_MODEL_NAME
    )
    registry.set_alias(version.version, CHALLENGER_ALIAS, model_name=ENSEMBLE_MODEL_NAME)
    return version


@dg.asset(group_name="training", compute_kind="mlflow")
def agent_ensemble(
    context: dg.AssetExecutionContext,
    config: EnsembleSettings,
    agent_zoo: AgentZooReport,
    learned_features: DatasetSplits,
    trained_agent: TrainedAgent,
    model_registry: MlflowRegistryResource,
) -> dg.Output[EnsembleReport]:
    """Validation-Sharpe-weighted blend of the zoo's agents (registered as one pyfunc) and FinRL's rolling selection."""
    env_spec = trained_agent.env_spec
    members = {name: outcome.policy() for name, outcome in agent_zoo.best_by_validation().items()}
    validation = trained_agent.observation_frame(learned_features.validation)
    test = trained_agent.observation_frame(learned_features.test)
    ensemble = WeightedEnsemblePolicy.from_validation(members, validation, env_spec, config.temperature)
    weighted = run_backtest(ensemble, test, env_spec)

    # FinRL's rolling selection: trade each test window with the member that was best on the dates before it.
    history = pd.concat([validation, test], ignore_index=True)
    windows = [
        w
        for w in rebalance_windows(history["date"], config.rebalance_dates, config.validation_dates)
        if w.trade_start >= test["date"].min()
    ]
    selections = rolling_selection(members, history, windows, env_spec)
    rolling_equity = trade_selections(selections, members, history, env_spec)
    choices = pd.DataFrame(
        [
            {"trade": f"{s.window.trade_start.date()}..{s.window.trade_end.date()}", "chosen": s.chosen}
            | {f"{k}_sharpe": v for k, v in s.sharpes.items()}
            for s in selections
        ]
    )

    market = MarketArrays.from_features(test)
    observation = observation_at(
        market, 0, np.array([env_spec.initial_amount]), np.zeros((1, market.n_assets))
    )
    example = pd.DataFrame(observation).rename(columns=lambda i: f"obs_{i}")
    spec = decision_spec_for(learned_features, env_spec, trained_agent.forecaster)
    version = _log_ensemble(ensemble, example, learned_features, spec, model_registry)
    context.log.info(f"{ENSEMBLE_MODEL_NAME} v{version.version} registered with weights {ensemble.weights}")
    png = equity_curve_png(
        {
            "weighted ensemble": weighted.equity,
            "rolling selection": rolling_equity,
            "equal-weight buy and hold": weighted.benchmark_equity,
        },
        "Ensembles over the test period",
    )
    report = EnsembleReport(
        weights=ensemble.weights,
        validation_sharpes=dict(ensemble.sharpes or {}),
        weighted_equity=weighted.equity,
        rolling_equity=rolling_equity,
        rolling_choices=choices,
        version=version,
    )
    return dg.Output(
        report,
        metadata={
            "model": f"{ENSEMBLE_MODEL_NAME} v{version.version}",
            "weights": markdown_table(
                [
                    {"member": k, "weight": w, "validation_sharpe": report.validation_sharpes.get(k)}
                    for k, w in ensemble.weights.items()
                ]
            ),
            "rolling_choices": markdown_table(choices.to_dict(orient="records")),
            "weighted_sharpe": dg.MetadataValue.float(weighted.metrics.sharpe),
            "rolling_sharpe": dg.MetadataValue.float(compute_metrics(rolling_equity).sharpe),
            "equity_curves": png_metadata(png),
        },
    )


class CandidateGateSettings(dg.Config):
    """The gate applied to every candidate (the same criteria as the registered candidate's blocking checks)."""

    min_sharpe: float = 1.0
    min_p25_sharpe: float = 0.5
    max_drawdown: float = 0.15
    min_deflated_sharpe: float = 0.5
    must_beat_buy_and_hold: bool = True


@dataclass(frozen=True)
class CandidateVerdicts:
    """The gate's verdict on every zoo agent and ensemble."""

    verdicts: tuple[CandidateVerdict, ...]
    benchmark_sharpe: float
    n_trials: int

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([v.row() for v in self.verdicts])


@dg.asset(group_name="evaluation", compute_kind="pandas")
def candidate_verdicts(
    context: dg.AssetExecutionContext,
    config: CandidateGateSettings,
    agent_zoo: AgentZooReport,
    agent_ensemble: EnsembleReport,
    learned_features: DatasetSplits,
    trained_agent: TrainedAgent,
    model_registry: MlflowRegistryResource,
) -> dg.Output[CandidateVerdicts]:
    """Every candidate (each zoo agent over its seeds, both ensembles) judged by the promotion gate's criteria."""
    thresholds = CandidateThresholds(**config.model_dump())
    test = trained_agent.observation_frame(learned_features.test)
    benchmark = compute_metrics(buy_and_hold_record(test, trained_agent.env_spec.simulation).equity)
    n_trials = max(model_registry.trial_count(), 1)
    runs = agent_zoo.split_outcomes()
    variance = per_period_sharpe_variance(runs)
    verdicts = []
    for algorithm, representative in agent_zoo.best_by_validation().items():
        own = [o for o in runs if o.algorithm == algorithm]
        verdicts.append(
            judge_candidate(
                algorithm,
                [o.test_sharpe for o in own],
                [o.test_max_drawdown for o in own],
                representative.test_sharpe,
                deflated_sharpe_ratio(representative.test_returns, n_trials, variance),
                benchmark.sharpe,
                thresholds,
            )
        )
    for name, equity in (
        ("weighted_ensemble", agent_ensemble.weighted_equity),
        ("rolling_selection", agent_ensemble.rolling_equity),
    ):
        metrics = compute_metrics(equity)
        verdicts.append(
            judge_candidate(
                name,
                [metrics.sharpe],
                [metrics.max_drawdown],
                metrics.sharpe,
                deflated_sharpe_ratio(daily_returns(equity), n_trials, variance),
                benchmark.sharpe,
                thresholds,
            )
        )
    result = CandidateVerdicts(tuple(verdicts), benchmark.sharpe, n_trials)
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
        metadata={
            "verdicts": markdown_table(table.to_dict(orient="records")),
            "buy_and_hold_sharpe": dg.MetadataValue.float(benchmark.sharpe),
            "trials": n_trials,
            "passing": dg.MetadataValue.text(", ".join(passing) or "none"),
        },
    )


class HyperparameterSearchSettings(dg.Config):
    """An optional Optuna search; every trial counts toward the deflated Sharpe's number of trials."""

    algorithm: str = "ppo"
    n_trials: int = 8
    timesteps: int = 4_000
    parallel_trials: int = 2
    seed: int = 0
    use_ray: bool = True


@dataclass(frozen=True)
class HyperparameterSearch:
    """Trials of the search and the best configuration by validation Sharpe."""

    algorithm: str
    trials: pd.DataFrame
    best_params: dict[str, object]
    best_validation_sharpe: float


@dg.asset(group_name="tuning", compute_kind="optuna")
def tuned_hyperparameters(
    context: dg.AssetExecutionContext,
    config: HyperparameterSearchSettings,
    learned_features: DatasetSplits,
    trained_agent: TrainedAgent,
    model_registry: MlflowRegistryResource,
) -> dg.Output[HyperparameterSearch]:
    """Optuna TPE search of one zoo agent's hyperparameters, trials trained on Ray, scored on validation only."""

    def record(number: int, params: dict[str, object], score: float) -> None:
        context.log.info(f"trial {number}: {params} -> validation Sharpe {score:.3f}")
        model_registry.log_trial(
            f"hpo_{config.algorithm}_trial_{number}",
            params={"algorithm": config.algorithm, "timesteps": config.timesteps, **params},
            metrics={"validation_sharpe": score},
            kind="hyperparameter_search",
        )

    result = search_hyperparameters(
        config.algorithm,
        trained_agent.observation_frame(learned_features.train),
        trained_agent.observation_frame(learned_features.validation),
        trained_agent.env_spec,
        n_trials=config.n_trials,
        timesteps=config.timesteps,
        seed=config.seed,
        batch_size=config.parallel_trials,
        use_ray=config.use_ray,
        on_trial=record,
    )
    search = HyperparameterSearch(
        config.algorithm, result.trials, result.best_params, result.best_validation_sharpe
    )
    png = grouped_bars_png(
        result.trials[["validation_sharpe"]].rename(index=lambda n: f"trial {n}"),
        f"{config.algorithm.upper()} hyperparameter search",
        "validation Sharpe",
    )
    return dg.Output(
        search,
        metadata={
            "trials": dg.MetadataValue.md(result.trials.to_markdown(floatfmt=".4g")),
            "best_params": dg.MetadataValue.json(result.best_params),
            "best_validation_sharpe": dg.MetadataValue.float(result.best_validation_sharpe),
            "validation_sharpe_per_trial": png_metadata(png),
        },
    )
