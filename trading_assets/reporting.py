"""What a backtest leaves for people to read: its tearsheet and trade log in MLflow, linked from Dagster, and the
facts of the version's model card."""

import tempfile
from dataclasses import asdict

import dagster as dg
import pandas as pd

from resources.mlflow_registry import EVALUATION_FOLDER, MlflowRegistryResource
from trading_assets.metadata import mlflow_ui_url
from trading_core.data.splits import DatasetSplits
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtester import BacktestResult
from trading_core.evaluation.tearsheet import write_tearsheet
from trading_core.market.arrays import MarketArrays

# Where the bars come from, as a model card states it.
DATA_SOURCE = "daily OHLCV bars of the pipeline's market-data resource (validated_daily_bars)"
# The settings of the environment a model card lists as costs and fills.
COST_SETTINGS = (
    "initial_amount",
    "commission",
    "impact",
    "spread",
    "fill_timing",
    "order_type",
    "participation_cap",
)


def closes_of(market: MarketArrays) -> pd.DataFrame:
    """The arrays' closes (carried over cells without a bar) as dates x tickers."""
    return pd.DataFrame(market.close, index=market.dates, columns=list(market.tickers))


def log_tearsheet(
    result: BacktestResult,
    market: MarketArrays,
    title: str,
    run_id: str,
    registry: MlflowRegistryResource,
) -> dict[str, dg.MetadataValue]:
    """Write a backtest's tearsheet, exposure figure and trade log, log them to ``run_id``'s ``evaluation``
    folder, and return the Dagster metadata linking to them (MLflow UI and artifact path)."""
    record = result.record
    if record is None:  # the FinRL engine records no fills: no trade log to write
        return {"tearsheet": dg.MetadataValue.text("none: the FinRL engine records no positions or fills")}
    with tempfile.TemporaryDirectory() as folder:
        files = write_tearsheet(
            folder,
            title,
            result.equity,
            result.benchmark_equity,
            record.positions,
            closes_of(market),
            record.trades,
        )
        registry.log_evaluation(
            run_id, metrics={}, files={path.name: path.read_bytes() for path in files.all()}
        )
    metadata: dict[str, dg.MetadataValue] = {}
    for label, path in (("tearsheet", files.html), ("trade_log", files.trade_log)):
        artifact = f"{EVALUATION_FOLDER}/{path.name}"
        links = registry.artifact_links(run_id, artifact, mlflow_ui_url())
        metadata[f"{label}_mlflow"] = dg.MetadataValue.url(links.run_page)
        metadata[f"{label}_file"] = dg.MetadataValue.url(links.file)
        metadata[f"{label}_path"] = dg.MetadataValue.path(links.location)
    metadata["fills"] = dg.MetadataValue.int(len(record.trades))
    return metadata


def _spans(splits: DatasetSplits) -> dict[str, str]:
    split = splits.split
    return {
        f"{period} period": f"{getattr(split, f'{period}_start').date()}..{getattr(split, f'{period}_end').date()}"
        for period in ("train", "validation", "test")
    }


def model_card_facts(
    candidate: str,
    algorithm: str,
    seed: int,
    env_spec: EnvSpec,
    splits: DatasetSplits,
    feature_columns: tuple[str, ...],
    forecaster: str,
    data_sha256: str,
    gate_steps: tuple[str, ...],
) -> dict[str, object]:
    """The facts of a version's model card: what it is, the data and periods it saw, what it observes, its costs
    and risk limits, and the gate steps that judge it."""
    described = env_spec.describe()
    risk = env_spec.simulation.risk
    return {
        "candidate": candidate,
        "algorithm": algorithm,
        "seed": seed,
        "forecaster": forecaster or "none",
        "data": DATA_SOURCE,
        "data_sha256": data_sha256,
        "periods": _spans(splits),
        "tickers": list(splits.tickers),
        "features": list(feature_columns),
        "costs": {name: described[name] for name in COST_SETTINGS if name in described},
        "risk_limits": None if risk is None else {k: v for k, v in asdict(risk).items() if v is not None},
        "gate_steps": list(gate_steps),
    }
