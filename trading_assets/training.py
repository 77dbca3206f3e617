"""Stage 4: train the candidate agent, log it to MLflow and register it; the agent zoo (agents x seeds x
windows on Ray) and the ensembles built from it."""

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import dagster as dg
import mlflow
import numpy as np
import pandas as pd

from resources.mlflow_registry import (
    CHALLENGER_ALIAS,
    TRIAL_TAG,
    ChampionAgent,
    MlflowRegistryResource,
    RegisteredVersion,
)
from trading_assets.config_defaults import DomainCheckedConfig, default_of, name_of
from trading_assets.learning import RegisteredForecaster
from trading_assets.metadata import markdown_table, png_metadata
from trading_assets.metadata import number as metadata_number
from trading_core.agents.decision_spec import DecisionSpec, feature_deciles
from trading_core.agents.ensemble import EnsembleConfig, WeightedEnsemblePolicy
from trading_core.agents.pyfunc import (
    DECISION_SPEC_KEY,
    ENSEMBLE_ARTIFACT_KEY,
    EnsemblePolicyModel,
    log_agent_model,
    observation_names,
)
from trading_core.agents.training import (
    CANDIDATE_SEED,
    PPOConfig,
    StartDecision,
    WarmStartRefused,
    decide_start_mode,
    fine_tune_ppo,
    train_ppo,
)
from trading_core.agents.zoo import TrainedPolicy
from trading_core.allocators.config import PRIOR_FEATURE
from trading_core.data.schema import BASE_COLUMNS, frame_fingerprint, indicator_columns_of
from trading_core.data.splits import PERIODS, DatasetSplits, Period
from trading_core.envs.fast import ActionSpec, observation_at
from trading_core.envs.rewards import RewardConfig
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtester import run_backtest
from trading_core.evaluation.metrics import (
    PerformanceMetrics,
    compute_metrics,
)
from trading_core.evaluation.plots import equity_curve_png, grouped_bars_png, learning_curve_png
from trading_core.evaluation.seed_sweep import (
    SeedOutcome,
    ZooConfig,
    grid_tasks,
    run_seed_sweep,
    seed_table,
    tilt_tasks,
)
from trading_core.evaluation.selection import (
    rebalance_windows,
    rolling_selection,
    trade_selections,
    weighted_ensemble_from_validation,
)
from trading_core.evaluation.walk_forward import WalkForwardConfig, WarmStartBudget, walk_forward_windows
from trading_core.market.arrays import MarketArrays, as_market, period_market
from trading_core.market.costs import (
    BROKER_PRESETS,
    CostModel,
    LinearImpact,
    NoImpact,
    SquareRootImpact,
    commission_model,
)
from trading_core.market.execution import ExecutionConfig
from trading_core.market.limits import RiskLimits
from trading_core.market.simulator import SimulationConfig
from trading_core.runtime.distributed import single_torch_thread
from trading_core.runtime.provenance import code_version, pinned_requirements

MODEL_REQUIREMENTS = (
    "stable-baselines3",
    "sb3-contrib",
    "torch",
    "gymnasium",
    "numpy",
    "pandas",
    "cloudpickle",
)


# Market-impact models a run config names; each with its own defaults.
IMPACT_MODELS = {"linear": LinearImpact(), "square_root": SquareRootImpact(), "none": NoImpact()}
_DEFAULT_COSTS = default_of(SimulationConfig, "cost_model")


class TrainingSettings(DomainCheckedConfig):
    """Agent, budget and environment settings of a training run (the backtest reuses the environment).

    Defaults: the PPO recipe of :class:`PPOConfig`, the environment of :class:`EnvSpec` and its simulation,
    fills and risk limits. ``start_mode``: ``scratch`` trains anew; ``warm_start`` fine-tunes the champion on the
    latest ``warm_start_dates`` training dates for ``warm_start_timesteps`` (the budget the walk-forward judged);
    ``auto`` does so when the latest walk-forward verdict is ``warm_start`` and a champion can continue, else
    trains from scratch and says why.
    """

    seed: int = CANDIDATE_SEED
    total_timesteps: int = default_of(PPOConfig, "total_timesteps")
    learning_rate: float = default_of(PPOConfig, "learning_rate")
    n_steps: int = default_of(PPOConfig, "n_steps")
    batch_size: int = default_of(PPOConfig, "batch_size")
    ent_coef: float = default_of(PPOConfig, "ent_coef")
    env_engine: Literal["fast", "finrl"] = default_of(EnvSpec, "engine")
    n_envs: int = default_of(EnvSpec, "n_envs")
    initial_amount: float = default_of(SimulationConfig, "initial_amount")
    action_mode: Literal["weights", "shares"] = default_of(ActionSpec, "mode")
    hmax: int = default_of(ActionSpec, "hmax")
    commission: str = name_of(BROKER_PRESETS, _DEFAULT_COSTS.commission)
    spread: Literal["auto", "quotes", "corwin_schultz", "fixed", "none"] = default_of(
        SimulationConfig, "spread"
    )
    spread_bps: float = default_of(SimulationConfig, "spread_bps")
    impact: Literal["linear", "square_root", "none"] = name_of(IMPACT_MODELS, _DEFAULT_COSTS.impact)
    fill_timing: Literal["next_open", "same_close"] = default_of(ExecutionConfig, "fill_timing")
    order_type: Literal["market", "limit"] = default_of(ExecutionConfig, "order_type")
    participation_cap: float | None = default_of(ExecutionConfig, "participation_cap")
    risk_enabled: bool = default_of(SimulationConfig, "risk") is not None
    max_weight: float = default_of(RiskLimits, "max_weight")
    var_limit: float | None = default_of(RiskLimits, "var_limit")
    max_drawdown_halt: float | None = default_of(RiskLimits, "max_drawdown_halt")
    daily_loss_limit: float | None = default_of(RiskLimits, "daily_loss_limit")
    halt_policy: Literal["rearm", "latch"] = default_of(RiskLimits, "halt_policy")
    rearm_after_bars: int = default_of(RiskLimits, "rearm_after_bars")
    drawdown_scaling: bool = default_of(RiskLimits, "drawdown_scaling")
    target_volatility: float | None = default_of(RiskLimits, "target_volatility")
    covariance: Literal["sample", "ledoit_wolf"] = default_of(RiskLimits, "covariance")
    max_cluster_exposure: float | None = default_of(RiskLimits, "max_cluster_exposure")
    cluster_correlation: float = default_of(RiskLimits, "cluster_correlation")
    max_risk_contribution: float | None = default_of(RiskLimits, "max_risk_contribution")
    max_sector_exposure: float | None = default_of(RiskLimits, "max_sector_exposure")
    action_temperature: float = default_of(ActionSpec, "temperature")
    reward_kind: Literal["log_return", "differential_sharpe", "value_change"] = default_of(
        RewardConfig, "kind"
    )
    finrl_cost_pct: float = default_of(EnvSpec, "finrl_cost_pct")
    use_learned_features: bool = True
    start_mode: Literal["scratch", "warm_start", "auto"] = "scratch"
    warm_start_timesteps: int = default_of(WalkForwardConfig, "warm_start_timesteps")
    warm_start_dates: int = default_of(WalkForwardConfig, "warm_start_dates")

    def to_domain(self) -> tuple[PPOConfig, EnvSpec]:
        """The recipe and the environment (each checks its own values); the seed and the warm-start budget are
        checked here."""
        if self.seed < 0:
            raise ValueError(f"seed must be at least 0, got {self.seed}")
        WarmStartBudget(self.warm_start_timesteps, self.warm_start_dates)
        return self.ppo_config(), self.env_spec()

    def ppo_config(self) -> PPOConfig:
        """The PPO recipe and budget these settings describe."""
        return PPOConfig(
            total_timesteps=self.total_timesteps,
            learning_rate=self.learning_rate,
            n_steps=self.n_steps,
            batch_size=self.batch_size,
            ent_coef=self.ent_coef,
        )

    def env_spec(self) -> EnvSpec:
        """The environment these settings describe."""
        impact = IMPACT_MODELS[self.impact]
        risk = (
            RiskLimits(
                max_weight=self.max_weight,
                var_limit=self.var_limit,
                max_drawdown_halt=self.max_drawdown_halt,
                daily_loss_limit=self.daily_loss_limit,
                halt_policy=self.halt_policy,
                rearm_after_bars=self.rearm_after_bars,
                drawdown_scaling=self.drawdown_scaling,
                target_volatility=self.target_volatility,
                covariance=self.covariance,
                max_cluster_exposure=self.max_cluster_exposure,
                cluster_correlation=self.cluster_correlation,
                max_risk_contribution=self.max_risk_contribution,
                max_sector_exposure=self.max_sector_exposure,
            )
            if self.risk_enabled
            else None
        )
        simulation = SimulationConfig(
            initial_amount=self.initial_amount,
            cost_model=CostModel(commission_model(self.commission), impact),
            spread=self.spread,
            spread_bps=self.spread_bps,
            execution=ExecutionConfig(
                fill_timing=self.fill_timing,
                order_type=self.order_type,
                participation_cap=self.participation_cap,
            ),
            risk=risk,
        )
        return EnvSpec(
            engine=self.env_engine,
            simulation=simulation,
            action=replace(
                default_of(EnvSpec, "action"),
                mode=self.action_mode,
                hmax=self.hmax,
                temperature=self.action_temperature,
                reward=replace(default_of(ActionSpec, "reward"), kind=self.reward_kind),
            ),
            n_envs=self.n_envs,
            finrl_cost_pct=self.finrl_cost_pct,
        )


@dataclass(frozen=True)
class TrainedAgent:
    """Where a trained agent was logged and how it was trained."""

    def observation_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """A features frame cut to the columns this agent observes, in its order."""
        return frame[[*BASE_COLUMNS, *self.feature_columns]]

    def observation_market(self, splits: DatasetSplits, period: Period = "full") -> MarketArrays:
        """A period of ``splits`` (or ``full``) as arrays on the run's universe, cut to the features this agent
        observes: what every consumer hands trading_core, so all periods have the same assets."""
        return period_market(splits, period, columns=[*BASE_COLUMNS, *self.feature_columns])

    run_id: str
    model_uri: str
    algorithm: str
    seed: int
    env_spec: EnvSpec
    feature_columns: tuple[str, ...]
    ppo_config: PPOConfig
    data_sha256: str
    validation_metrics: PerformanceMetrics
    forecaster: str = ""  # registered CNN+LSTM "name/version" whose outputs the agent observes


def agent_market(
    agent: TrainedAgent, splits: DatasetSplits, env_spec: EnvSpec, period: Period = "full"
) -> MarketArrays:
    """A period (or ``full``) as the agents of ``env_spec`` trade it: :meth:`TrainedAgent.observation_market`,
    with the prior column when ``env_spec`` tilts around a prior (fit on the full history, then cut, so each
    period's priors saw everything before them)."""
    return _traded_market(splits, env_spec, period, [*BASE_COLUMNS, *agent.feature_columns])


def _traded_market(
    splits: DatasetSplits, env_spec: EnvSpec, period: Period, columns: list[str]
) -> MarketArrays:
    """A period of ``columns`` on the universe, with the prior column when ``env_spec`` tilts around a prior."""
    if env_spec.action.prior is None:
        return period_market(splits, period, columns)
    market = env_spec.market_for(period_market(splits, "full", columns))
    if period == "full":
        return market
    split = splits.split
    return market.between(getattr(split, f"{period}_start"), getattr(split, f"{period}_end"))


def decision_spec_for(splits: DatasetSplits, env_spec: EnvSpec, forecaster: str) -> DecisionSpec:
    """The spec registered with an agent trained on ``splits`` (forecaster as "name/version", or empty); an
    agent with a prior observes its column last (:meth:`EnvSpec.market_for`)."""
    prior = (PRIOR_FEATURE,) if env_spec.action.prior is not None else ()
    return DecisionSpec(
        tickers=tuple(splits.tickers),
        feature_columns=(*splits.feature_columns, *prior),
        env_spec=env_spec,
        forecaster_uri=f"models:/{forecaster}" if forecaster else None,
        use_turbulence="turbulence" in splits.feature_columns,
        uses_vix="vix" in splits.feature_columns,
        regime_model=splits.regime_model,
        sectors=splits.sector_labels(),
        reference_quantiles=feature_deciles(
            splits.train, [c for c in indicator_columns_of(splits.train) if not c.startswith("cnn_lstm_")]
        ),
    )


def observation_example(splits: DatasetSplits, env_spec: EnvSpec) -> pd.DataFrame:
    """The observation of a fresh portfolio at the test period's first close: the registered model's input example."""
    return example_at(
        _traded_market(splits, env_spec, "test", [*BASE_COLUMNS, *splits.feature_columns]), env_spec
    )


def example_at(market: MarketArrays, env_spec: EnvSpec) -> pd.DataFrame:
    """The observation of a fresh portfolio at the first close of ``market``, as a model input example."""
    observation = observation_at(
        market, 0, np.array([env_spec.initial_amount]), np.zeros((1, market.n_assets))
    )
    return pd.DataFrame(observation, columns=observation_names(market.tickers, market.feature_names))


def candidate_run_name(algorithm: str, seed: int, splits: DatasetSplits, start_mode: str = "scratch") -> str:
    """A run name that says what the run trained: ``ppo seed 42 · train 2000-01-03..2009-12-31``."""
    split = splits.split
    warm = " · warm start" if start_mode == "warm_start" else ""
    return f"{algorithm} seed {seed} · train {split.train_start.date()}..{split.train_end.date()}{warm}"


# MLflow's dataset contexts of the three periods.
DATASET_CONTEXTS = {"train": "training", "validation": "validation", "test": "test"}


def log_datasets(splits: DatasetSplits) -> None:
    """Log the train, validation and test feature frames as the active run's MLflow datasets, each with the
    project's SHA-256 of the frame (its digest holds the first 32 hex digits; MLflow keeps 36 characters)."""
    for period, context in DATASET_CONTEXTS.items():
        frame = getattr(splits, period)
        sha256 = frame_fingerprint(frame)
        dataset = mlflow.data.from_pandas(frame, name=f"features_{period}", digest=sha256[:32])
        mlflow.log_input(dataset, context=context, tags={"sha256": sha256, "rows": str(len(frame))})


def _warm_started(
    config: TrainingSettings,
    champion: ChampionAgent,
    train: MarketArrays,
    env_spec: EnvSpec,
    report: Callable[[str], None],
) -> TrainedPolicy:
    """The champion fine-tuned on the latest training dates (:func:`fine_tune_ppo` checks it can continue)."""
    spec = champion.decision_spec
    return fine_tune_ppo(
        champion.policy,
        train,
        env_spec,
        config.ppo_config(),
        timesteps=config.warm_start_timesteps,
        seed=config.seed,
        recent_dates=config.warm_start_dates,
        source_tickers=None if spec is None else spec.tickers,
        source_train_end=champion.train_end,
        report=report,
    )


def _start_decision(
    config: TrainingSettings, registry: MlflowRegistryResource
) -> tuple[StartDecision, ChampionAgent | None]:
    """How this run starts; the registry is read only when the mode is not ``scratch``."""
    if config.start_mode == "scratch":
        return decide_start_mode("scratch", None, None), None
    recorded = registry.latest_start_mode_verdict() if config.start_mode == "auto" else None
    verdict = None if recorded is None else recorded.verdict
    champion = (
        registry.load_champion() if config.start_mode == "warm_start" or verdict == "warm_start" else None
    )
    decision = decide_start_mode(config.start_mode, verdict, None if champion is None else champion.label)
    return decision, champion


def train_candidate(
    config: TrainingSettings,
    registry: MlflowRegistryResource,
    train: MarketArrays,
    env_spec: EnvSpec,
    report: Callable[[str], None],
) -> tuple[TrainedPolicy, StartDecision, str]:
    """The candidate agent in the configured start mode: ``auto`` falls back to scratch (saying why) when no
    verdict, no champion or a refused warm start stands in its way; ``warm_start`` raises instead.

    :return: the agent, how it started, and the champion it was fine-tuned from (``name/version``; empty: scratch)
    """
    decision, champion = _start_decision(config, registry)
    with single_torch_thread():
        if decision.mode == "warm_start":
            try:
                policy = _warm_started(config, champion, train, env_spec, report)
                report(f"start mode warm_start: {decision.reason}")
                return policy, decision, champion.label
            except WarmStartRefused as refusal:
                if config.start_mode == "warm_start":
                    raise
                decision = StartDecision("scratch", f"auto: {refusal}; training from scratch")
        report(f"start mode scratch: {decision.reason}")
        return train_ppo(train, env_spec, config.ppo_config(), seed=config.seed, report=report), decision, ""


@dg.asset(
    group_name="training",
    compute_kind="stable_baselines3",
    required_resource_keys={"mlflow", "model_registry"},
)
def trained_agent(
    context: dg.AssetExecutionContext,
    config: TrainingSettings,
    learned_features: DatasetSplits,
    cnn_lstm_model: RegisteredForecaster,
) -> dg.Output[TrainedAgent]:
    """A PPO agent trained over the training period (fast env with costs and risk by default), or the champion
    fine-tuned on its latest dates (``start_mode``), logged to MLflow."""
    tracking = context.resources.mlflow  # dagster-mlflow: one MLflow run per Dagster run
    env_spec = config.env_spec()
    dataset_splits = learned_features if config.use_learned_features else learned_features.without_learned()
    ppo_config = config.ppo_config()
    started = time.perf_counter()
    # One torch thread (inside): the seed sweep's run of this seed then reproduces a scratch agent exactly.
    model, decision, warm_started_from = train_candidate(
        config,
        context.resources.model_registry,
        period_market(dataset_splits, "train"),
        env_spec,
        context.log.info,
    )
    training_seconds = time.perf_counter() - started
    validation = run_backtest(model, period_market(dataset_splits, "validation"), env_spec)

    data_hash = frame_fingerprint(dataset_splits.train)
    split = dataset_splits.split.as_dict()
    forecaster = (
        f"{cnn_lstm_model.version.name}/{cnn_lstm_model.version.version}"
        if config.use_learned_features
        else ""
    )
    tracking.log_params(
        {
            "algorithm": "PPO",
            "seed": config.seed,
            **{f"ppo_{k}": v for k, v in ppo_config.as_dict().items()},
            **{f"env_{k}": v for k, v in env_spec.describe().items()},
            "tickers": ",".join(dataset_splits.tickers),
            "feature_columns": ",".join(dataset_splits.feature_columns),
        }
    )
    tracking.set_tags(
        {
            "data_sha256": data_hash,
            "code_version": code_version(),
            "dagster_asset": "trained_agent",
            "cnn_lstm_model": forecaster or "none",
            TRIAL_TAG: "candidate",
            **{f"data_{k}": v for k, v in split.items()},
            "retraining.start_mode": decision.mode,
            "retraining.start_mode_requested": config.start_mode,
            "retraining.start_mode_reason": decision.reason,
            **({"warm_started_from": warm_started_from} if warm_started_from else {}),
        }
    )
    mlflow.set_tag("mlflow.runName", candidate_run_name("ppo", config.seed, dataset_splits, decision.mode))
    log_datasets(dataset_splits)
    tracking.log_metrics(
        {
            "training_seconds": training_seconds,
            **{f"validation_{k}": v for k, v in validation.metrics.as_dict().items()},
        }
    )
    # MLflow step metrics: the reward curve over training, what budgets are chosen from.
    for steps, value in model.learning_curve:
        tracking.log_metric("train_mean_reward_per_step", value, step=steps)
    example = observation_example(dataset_splits, env_spec)
    model_info = log_agent_model(
        model,
        "ppo",
        decision_spec_for(dataset_splits, env_spec, forecaster),
        example,
        pinned_requirements(MODEL_REQUIREMENTS),
    )
    run_id = tracking.active_run().info.run_id
    tracking.end_run()

    agent = TrainedAgent(
        run_id=run_id,
        model_uri=model_info.model_uri,
        algorithm="PPO",
        seed=config.seed,
        env_spec=env_spec,
        feature_columns=tuple(dataset_splits.feature_columns),
        ppo_config=ppo_config,
        data_sha256=data_hash,
        validation_metrics=validation.metrics,
        forecaster=forecaster,
    )
    return dg.Output(
        agent,
        metadata={
            "mlflow_run_id": run_id,
            "model_uri": model_info.model_uri,
            "training_seconds": metadata_number(round(training_seconds, 1)),
            "total_timesteps": (config.warm_start_timesteps if warm_started_from else config.total_timesteps),
            "start_mode": decision.mode,
            "start_mode_reason": decision.reason,
            "warm_started_from": warm_started_from or "none",
            "seed": config.seed,
            "data_sha256": data_hash,
            "cnn_lstm_model": forecaster or "none",
            "validation_metrics": markdown_table([validation.metrics.as_dict()]),
            "learning_curve": png_metadata(
                learning_curve_png(
                    {"PPO": model.learning_curve},
                    f"Training reward, seed {config.seed}",
                    "mean reward per step (last rollout)",
                )
            ),
        },
    )


ENSEMBLE_MODEL_NAME = "rl_trading_ensemble"


SPLIT_WINDOW = "split"


class AgentZooSettings(DomainCheckedConfig):
    """Which agents, seeds and windows the zoo trains, and each run's budget (defaults: :class:`ZooConfig`)."""

    algorithms: list[str] = list(default_of(ZooConfig, "algorithms"))
    tilts: list[str] = list(default_of(ZooConfig, "tilts"))
    n_seeds: int = default_of(ZooConfig, "n_seeds")
    first_seed: int = default_of(ZooConfig, "first_seed")
    timesteps: int = default_of(ZooConfig, "timesteps")
    walk_forward_windows: int = default_of(ZooConfig, "walk_forward_windows")
    window_test_dates: int = default_of(ZooConfig, "window_test_dates")
    use_ray: bool = default_of(ZooConfig, "use_ray")

    def to_domain(self) -> ZooConfig:
        return ZooConfig(
            **{**self.model_dump(), "algorithms": tuple(self.algorithms), "tilts": tuple(self.tilts)}
        )


@dataclass(frozen=True)
class AgentZooReport:
    """Every run of the zoo: one row per candidate, seed and window, with the trained policies kept."""

    table: pd.DataFrame
    outcomes: tuple[SeedOutcome, ...]

    def split_outcomes(self) -> list[SeedOutcome]:
        return [o for o in self.outcomes if o.window == SPLIT_WINDOW]

    def best_by_validation(self) -> dict[str, SeedOutcome]:
        """Per candidate (a tilt candidate apart from its algorithm), the seed validation picks (the test period
        never chooses)."""

        def score(outcome: SeedOutcome) -> float:
            return outcome.validation_sharpe if np.isfinite(outcome.validation_sharpe) else -np.inf

        best: dict[str, SeedOutcome] = {}
        for outcome in self.split_outcomes():
            current = best.get(outcome.candidate)
            if current is None or score(outcome) > score(current):
                best[outcome.candidate] = outcome
        return best


def _walk_forward_periods(
    features: pd.DataFrame | MarketArrays, n_windows: int, test_dates: int, validation_dates: int
) -> dict[str, tuple[MarketArrays, MarketArrays, MarketArrays]]:
    """(train, validation, test) per walk-forward window; validation is the tail of each training window.

    Every part is a view of the same arrays, so all windows share the universe of ``features``."""
    market = as_market(features)
    dates = market.dates
    periods = {}
    for number, window in enumerate(walk_forward_windows(dates, n_windows, test_dates), start=1):
        train_dates = dates[(dates >= window.train_start) & (dates <= window.train_end)]
        periods[f"window_{number}"] = (
            market.between(window.train_start, train_dates[-validation_dates - 1]),
            market.between(train_dates[-validation_dates], window.train_end),
            market.between(window.test_start, window.test_end),
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
    """PPO, A2C, SAC, TD3, DDPG, QR-DQN and PPO tilting an allocator under several seeds (and walk-forward
    windows), trained as Ray tasks."""
    plan = config.to_domain()
    # Every period and window on the run's universe: a ticker listing or delisting keeps its column.
    split_periods = tuple(trained_agent.observation_market(learned_features, p) for p in PERIODS)
    periods = {SPLIT_WINDOW: split_periods}
    full = (
        trained_agent.observation_market(learned_features)
        if plan.tilts or plan.walk_forward_windows
        else None
    )
    if config.walk_forward_windows:
        validation_dates = split_periods[1].n_steps
        periods.update(
            _walk_forward_periods(
                full, config.walk_forward_windows, config.window_test_dates, validation_dates
            )
        )
    configs = plan.configs()
    tasks = grid_tasks(configs, plan.seeds(), periods, trained_agent.env_spec, keep_policies=True)
    if plan.tilts:
        # Each tilt candidate's prior is fit on the full history, then cut into the same periods.
        tasks += tilt_tasks(plan, full, periods, trained_agent.env_spec, keep_policies=True)
    context.log.info(
        f"agent zoo: {len(configs) + len(plan.tilts)} agents x {config.n_seeds} seeds x {len(periods)} windows "
        f"= {len(tasks)} runs {'on Ray' if config.use_ray else 'in turn'}"
    )
    outcomes = run_seed_sweep(tasks, use_ray=config.use_ray)
    for outcome in outcomes:
        model_registry.log_trial(
            f"agent_zoo_{outcome.candidate}_seed_{outcome.seed}_{outcome.window}",
            params={
                "candidate": outcome.candidate,
                "algorithm": outcome.algorithm,
                "seed": outcome.seed,
                "window": outcome.window,
                "total_timesteps": config.timesteps,
                "candidate_run": trained_agent.run_id,
            },
            metrics=outcome.trial_metrics(),
            kind="agent_zoo",
            curves={"train_mean_reward_per_step": list(outcome.learning_curve)},
        )
    table = seed_table(outcomes)
    report = AgentZooReport(table, tuple(outcomes))
    split = table[table["window"] == SPLIT_WINDOW]
    per_agent = split.groupby("candidate")["test_sharpe"].describe()[["min", "25%", "50%", "max"]]
    png = grouped_bars_png(
        split.assign(run=split["candidate"] + " s" + split["seed"].astype(str)).set_index("run")[
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
            "learning_curves": png_metadata(
                learning_curve_png(
                    {
                        f"{o.candidate} s{o.seed}": list(o.learning_curve)
                        for o in outcomes
                        if o.window == SPLIT_WINDOW
                    },
                    "Training reward per agent and seed",
                    "mean reward per step (last rollout)",
                )
            ),
        },
    )


class EnsembleSettings(dg.Config):
    """Softmax temperature of the weighted ensemble and FinRL's rolling-selection windows (``EnsembleConfig``)."""

    temperature: float = default_of(EnsembleConfig, "temperature")
    rebalance_dates: int = default_of(EnsembleConfig, "rebalance_dates")
    validation_dates: int = default_of(EnsembleConfig, "validation_dates")


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
            pip_requirements=pinned_requirements(MODEL_REQUIREMENTS),
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
    # The ensemble blends actions: only members that speak the recipe's action (not a tilt candidate's).
    members = {
        name: outcome.policy()
        for name, outcome in agent_zoo.best_by_validation().items()
        if outcome.env_spec is None or outcome.env_spec.action == env_spec.action
    }
    split = learned_features.split
    validation = trained_agent.observation_market(learned_features, "validation")
    test_market = trained_agent.observation_market(learned_features, "test")
    ensemble = weighted_ensemble_from_validation(members, validation, env_spec, config.temperature)
    weighted = run_backtest(ensemble, test_market, env_spec)

    # FinRL's rolling selection: trade each test window with the member that was best on the dates before it.
    # Validation and test as one window of the full arrays, on the same universe as both periods.
    history = trained_agent.observation_market(learned_features).between(
        split.validation_start, split.test_end
    )
    windows = [
        w
        for w in rebalance_windows(history.dates, config.rebalance_dates, config.validation_dates)
        if w.trade_start >= split.test_start
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

    example = example_at(test_market, env_spec)
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
            "weighted_sharpe": metadata_number(weighted.metrics.sharpe),
            "rolling_sharpe": metadata_number(compute_metrics(rolling_equity).sharpe),
            "equity_curves": png_metadata(png),
        },
    )
