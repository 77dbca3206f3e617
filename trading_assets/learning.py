"""Stage 3b: the CNN+LSTM forecaster and the learned features it adds to the RL observation."""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import torch

from resources.mlflow_registry import MlflowRegistryResource, RegisteredVersion
from trading_assets.config_defaults import default_of
from trading_assets.metadata import frame_metadata, markdown_table, number, png_metadata
from trading_core.data.leakage import spread_cutoffs, truncate_and_compare
from trading_core.data.schema import frame_fingerprint
from trading_core.data.splits import DatasetSplits, apply_split
from trading_core.evaluation.plots import equity_curve_png
from trading_core.models.cnn_lstm import (
    CNNLSTMConfig,
    ForecasterExport,
    TrainedForecaster,
    add_learned_features,
    feature_builder,
    train_cnn_lstm,
)
from trading_core.models.cnn_lstm import (
    learned_features as forecast_features,
)
from trading_core.regimes.history import MarketRegimes, add_regime_features, regime_feature_builder
from trading_core.runtime.provenance import code_version, pinned_requirements

FORECASTER_MODEL_NAME = "rl_trading_cnn_lstm"


class ForecasterSettings(dg.Config):
    """Architecture and training of the CNN+LSTM forecaster (defaults: :class:`CNNLSTMConfig`)."""

    window: int = default_of(CNNLSTMConfig, "window")
    conv_channels: int = default_of(CNNLSTMConfig, "conv_channels")
    lstm_hidden: int = default_of(CNNLSTMConfig, "lstm_hidden")
    embedding_dim: int = default_of(CNNLSTMConfig, "embedding_dim")
    learning_rate: float = default_of(CNNLSTMConfig, "learning_rate")
    max_epochs: int = default_of(CNNLSTMConfig, "max_epochs")
    patience: int = default_of(CNNLSTMConfig, "patience")
    seed: int = default_of(CNNLSTMConfig, "seed")

    def to_domain(self) -> CNNLSTMConfig:
        """The forecaster's settings; those not exposed here keep their defaults."""
        return CNNLSTMConfig(**self.model_dump())


class LearnedFeatureSettings(dg.Config):
    """Which learned columns join the technical features in every split's observation."""

    use_regime_features: bool = True  # the market regimes' filtered probabilities, the same for every ticker


@dataclass(frozen=True)
class RegisteredForecaster:
    """A trained forecaster and its version in the MLflow registry."""

    forecaster: TrainedForecaster
    version: RegisteredVersion


def _log_forecaster(
    forecaster: TrainedForecaster, splits: DatasetSplits, registry: MlflowRegistryResource
) -> RegisteredVersion:
    """Log the forecaster to its own MLflow run (pytorch flavour with signature) and register it."""
    experiment_id = registry.experiment_id()  # also points MLflow at the registry's store
    n_inputs = len(forecaster.input_columns)
    example = np.zeros((2, forecaster.config.window, n_inputs), dtype=np.float32)
    export = ForecasterExport(forecaster.module).eval()
    with torch.no_grad():
        output = export(torch.from_numpy(example)).numpy()
    # Nested: when the step shares a process with the dagster-mlflow run of this Dagster run, the forecaster's
    # run sits under it; in a process of its own it is a top-level run.
    with mlflow.start_run(experiment_id=experiment_id, run_name="cnn_lstm_forecaster", nested=True) as run:
        mlflow.log_params({f"cnn_lstm_{k}": v for k, v in forecaster.config.as_dict().items()})
        mlflow.log_metrics(
            {
                "validation_loss": forecaster.validation_loss,
                "validation_directional_accuracy": forecaster.directional_accuracy,
                "validation_information_coefficient": forecaster.information_coefficient,
                "best_epoch": forecaster.best_epoch,
            }
        )
        mlflow.set_tags(
            {
                "data_sha256": frame_fingerprint(splits.train),
                "code_version": code_version(),
                "input_columns": ",".join(forecaster.input_columns),
                **{f"data_{k}": v for k, v in splits.split.as_dict().items()},
            }
        )
        info = mlflow.pytorch.log_model(
            export,
            name="cnn_lstm",
            signature=mlflow.models.infer_signature(example, output),
            input_example=example,
            pip_requirements=pinned_requirements(("torch", "numpy")),
        )
        with tempfile.TemporaryDirectory() as folder:
            # Normalization statistics and input columns: what turns a features frame into model inputs.
            mlflow.log_artifacts(str(forecaster.save(Path(folder) / "forecaster")), "forecaster")
        run_id = run.info.run_id
    return registry.register(
        info.model_uri,
        run_id,
        tags={"window": str(forecaster.config.window), "data_sha256": frame_fingerprint(splits.train)},
        model_name=FORECASTER_MODEL_NAME,
    )


@dg.asset(group_name="learning", compute_kind="pytorch")
def cnn_lstm_model(
    context: dg.AssetExecutionContext,
    config: ForecasterSettings,
    dataset_splits: DatasetSplits,
    model_registry: MlflowRegistryResource,
) -> dg.Output[RegisteredForecaster]:
    """A CNN+LSTM forecast of next-day returns per asset, early-stopped on validation, registered in MLflow."""
    forecaster = train_cnn_lstm(
        dataset_splits.train, dataset_splits.validation, config.to_domain(), report=context.log.info
    )
    version = _log_forecaster(forecaster, dataset_splits, model_registry)
    history = pd.DataFrame(forecaster.history).set_index("epoch")
    png = equity_curve_png(
        {"train": history["train_loss"], "validation": history["validation_loss"]},
        "CNN+LSTM training (Gaussian NLL)",
        ylabel="loss",
    )
    return dg.Output(
        RegisteredForecaster(forecaster, version),
        metadata={
            "model": f"{version.name} v{version.version}",
            "best_epoch": forecaster.best_epoch,
            "validation_loss": number(forecaster.validation_loss),
            "validation_directional_accuracy": number(forecaster.directional_accuracy),
            "validation_information_coefficient": number(forecaster.information_coefficient),
            "loss_curves": png_metadata(png),
        },
    )


@dg.asset(
    group_name="learning",
    compute_kind="pytorch",
    check_specs=[
        dg.AssetCheckSpec(
            name="no_lookahead",
            asset="learned_features",
            description="features and forecasts rebuilt from bars cut at date t equal the full-data values at t",
            blocking=True,
        )
    ],
)
def learned_features(
    context: dg.AssetExecutionContext,
    config: LearnedFeatureSettings,
    validated_daily_bars: pd.DataFrame,
    features: pd.DataFrame,
    dataset_splits: DatasetSplits,
    cnn_lstm_model: RegisteredForecaster,
    market_regimes: MarketRegimes,
    sector_map: pd.DataFrame,
):
    """Technical features plus the forecaster's mean, variance and embedding per asset and the market regimes'
    filtered probabilities per date, split like the features, with each ticker's sector."""
    lacking = [c for c in ("tic", "sector") if c not in sector_map.columns]
    if lacking:
        raise ValueError(f"learned_features: sector_map lacks column(s) {lacking}")
    forecaster = cnn_lstm_model.forecaster
    full = add_learned_features(features, forecast_features(forecaster, features))
    build = feature_builder(features, forecaster)
    regime_model = market_regimes.model if config.use_regime_features else None
    if config.use_regime_features:
        full = add_regime_features(full, market_regimes.frame)
        # Rebuilt from the cut bars alone, over the universe the regimes were fitted on (the live loop's).
        build = regime_feature_builder(build, market_regimes.regime_model(), tickers=dataset_splits.tickers)
    cutoffs = spread_cutoffs(full["date"], count=3, skip=forecaster.config.window + 1)
    findings = truncate_and_compare(validated_daily_bars, build, cutoffs)
    passed = not findings
    description = (
        f"identical at {', '.join(str(c.date()) for c in cutoffs)}"
        if passed
        else "; ".join(
            f"{f.cutoff.date()}: {', '.join(f.columns)} differ by {f.max_abs_difference:.3g}"
            for f in findings
        )
    )
    if passed:
        universe = set(dataset_splits.tickers)
        splits = DatasetSplits(
            split=dataset_splits.split,
            **apply_split(full, dataset_splits.split),
            regime_model=regime_model,
            # The risk manager's sector-exposure limit reads them wherever these splits are traded.
            sectors={
                str(tic): str(sector)
                for tic, sector in zip(sector_map["tic"], sector_map["sector"], strict=True)
                if tic in universe
            },
        )
        metadata = frame_metadata(full)
        metadata["learned_columns"] = dg.MetadataValue.text(", ".join(forecaster.output_columns))
        metadata["regime_columns"] = dg.MetadataValue.text(
            ", ".join(market_regimes.probability_columns) if config.use_regime_features else "none"
        )
        metadata["sectors"] = dg.MetadataValue.text(
            ", ".join(sorted(set(splits.sector_labels().values()))) or "none"
        )
        metadata["periods"] = markdown_table(
            [{"period": name, "rows": len(getattr(splits, name))} for name in ("train", "validation", "test")]
        )
        yield dg.Output(splits, metadata=metadata)
    yield dg.AssetCheckResult(
        check_name="no_lookahead",
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={"cutoffs": ", ".join(str(c.date()) for c in cutoffs)},
    )
    if not passed:
        raise dg.Failure(description=f"lookahead in learned features: {description}")
