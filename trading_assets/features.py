"""Stage 3: causal technical features and the dated train / validation / test split."""

from dataclasses import dataclass

import dagster as dg
import pandas as pd

from resources.market_data import MarketDataResource
from trading_assets.metadata import frame_metadata, markdown_table
from trading_core.features import build_features, feature_columns_of
from trading_core.splits import DateSplit, apply_split, make_date_split


class FeatureSettings(dg.Config):
    """Which features to add on top of FinRL's technical indicators."""

    use_turbulence: bool = True
    use_vix: bool = True


class SplitSettings(dg.Config):
    """Dates (inclusive) ending the training and validation periods; fractions of dates when unset."""

    train_end: str | None = None
    validation_end: str | None = None
    train_fraction: float = 0.7
    validation_fraction: float = 0.15


@dataclass(frozen=True)
class DatasetSplits:
    """Feature frames of the three periods and the dates that bound them."""

    split: DateSplit
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    @property
    def feature_columns(self) -> list[str]:
        return feature_columns_of(self.train)

    @property
    def tickers(self) -> list[str]:
        return sorted(self.train["tic"].unique())

    @property
    def full(self) -> pd.DataFrame:
        """The three periods back in one frame."""
        return pd.concat([self.train, self.validation, self.test], ignore_index=True)

    def without_learned(self) -> "DatasetSplits":
        """The same periods without the forecaster's columns (technical features only)."""

        def strip(frame: pd.DataFrame) -> pd.DataFrame:
            return frame[[c for c in frame.columns if not c.startswith("cnn_lstm_")]]

        return DatasetSplits(self.split, strip(self.train), strip(self.validation), strip(self.test))


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
    return dg.Output(frame, metadata=metadata)


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
