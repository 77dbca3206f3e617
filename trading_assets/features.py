"""Stage 3: causal technical features and the dated train / validation / test split."""

import dagster as dg
import pandas as pd

from resources.market_data import MarketDataResource
from trading_assets.config_defaults import default_of
from trading_assets.metadata import frame_metadata, markdown_table
from trading_core.data.coverage import excluded_tickers, universe_coverage
from trading_core.data.schema import feature_columns_of
from trading_core.data.splits import DatasetSplits, apply_split, make_date_split
from trading_core.features.batch import build_features, indicator_warm_up


class FeatureSettings(dg.Config):
    """Which features to add on top of FinRL's technical indicators."""

    use_turbulence: bool = default_of(build_features, "use_turbulence")
    use_vix: bool = True


class SplitSettings(dg.Config):
    """Dates (inclusive) ending the training and validation periods; fractions of dates when unset (defaults:
    :func:`make_date_split`)."""

    train_end: str | None = default_of(make_date_split, "train_end")
    validation_end: str | None = default_of(make_date_split, "validation_end")
    train_fraction: float = default_of(make_date_split, "train_fraction")
    validation_fraction: float = default_of(make_date_split, "validation_fraction")


@dg.asset(group_name="features", compute_kind="finrl")
def features(
    config: FeatureSettings, validated_daily_bars: pd.DataFrame, market_data: MarketDataResource
) -> dg.Output[pd.DataFrame]:
    """FinRL technical indicators, turbulence and VIX per date and ticker, computed from past bars only."""
    vix = market_data.load_vix() if config.use_vix else None
    frame = build_features(validated_daily_bars, use_turbulence=config.use_turbulence, vix=vix)
    metadata = frame_metadata(frame)
    metadata["feature_columns"] = dg.MetadataValue.text(", ".join(feature_columns_of(frame)))
    metadata["dropped_warmup_dates"] = dg.MetadataValue.int(
        validated_daily_bars["date"].nunique() - frame["date"].nunique()
    )
    metadata.update(coverage_metadata(validated_daily_bars, frame))
    return dg.Output(frame, metadata=metadata)


def coverage_metadata(bars: pd.DataFrame, frame: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    """The universe coverage table, and the tickers the features leave out with the reason."""
    coverage = universe_coverage(bars, frame, indicator_warm_up())
    excluded = excluded_tickers(coverage)
    table = coverage.assign(
        first_date=coverage["first_date"].dt.date, last_date=coverage["last_date"].dt.date
    )
    return {
        "universe_coverage": dg.MetadataValue.md(table.to_markdown(index=False)),
        "excluded_tickers": dg.MetadataValue.md(
            "\n".join(f"- {tic}: {reason}" for tic, reason in excluded.items()) or "none"
        ),
    }


@dg.asset(group_name="features", compute_kind="pandas")
def dataset_splits(config: SplitSettings, features: pd.DataFrame) -> dg.Output[DatasetSplits]:
    """Training, validation and test periods of the features, consecutive and without overlap."""
    split = make_date_split(
        features["date"],
        train_end=config.train_end,
        validation_end=config.validation_end,
        train_fraction=config.train_fraction,
        validation_fraction=config.validation_fraction,
    )
    parts = apply_split(features, split)
    splits = DatasetSplits(split=split, **parts)
    rows = [
        {
            "period": name,
            "first_date": frame["date"].min().date(),
            "last_date": frame["date"].max().date(),
            "dates": frame["date"].nunique(),
            "rows": len(frame),
        }
        for name, frame in parts.items()
    ]
    return dg.Output(splits, metadata={"periods": markdown_table(rows), **split.as_dict()})
