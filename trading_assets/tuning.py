"""On demand: hyperparameter search for one agent, scored on validation only."""

from dataclasses import dataclass

import dagster as dg
import pandas as pd

from resources.mlflow_registry import MlflowRegistryResource
from trading_assets.config_defaults import default_of
from trading_assets.metadata import number, png_metadata
from trading_assets.training import TrainedAgent
from trading_core.data.splits import DatasetSplits
from trading_core.evaluation.plots import grouped_bars_png
from trading_core.evaluation.tuning import SearchConfig, search_hyperparameters


class HyperparameterSearchSettings(dg.Config):
    """An optional Optuna search; every trial counts toward the deflated Sharpe's number of trials.

    Defaults: :class:`SearchConfig`.
    """

    algorithm: str = default_of(SearchConfig, "algorithm")
    n_trials: int = default_of(SearchConfig, "n_trials")
    timesteps: int = default_of(SearchConfig, "timesteps")
    parallel_trials: int = default_of(SearchConfig, "parallel_trials")
    seed: int = default_of(SearchConfig, "seed")
    use_ray: bool = default_of(SearchConfig, "use_ray")


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
        trained_agent.observation_market(learned_features, "train"),
        trained_agent.observation_market(learned_features, "validation"),
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
            "best_validation_sharpe": number(result.best_validation_sharpe),
            "validation_sharpe_per_trial": png_metadata(png),
        },
    )
