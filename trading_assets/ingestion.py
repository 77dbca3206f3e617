"""Stage 1: raw market bars from the market-data resource."""

import dagster as dg
import pandas as pd

from resources.market_data import MarketDataResource, RawBars
from trading_assets.metadata import frame_metadata


class IngestionSettings(dg.Config):
    """Which bars a run may see; the weekly partitions set ``as_of`` to their week's last day."""

    as_of: str | None = None


@dg.asset(group_name="ingestion", compute_kind="pandas")
def raw_daily_bars(
    context: dg.AssetExecutionContext, config: IngestionSettings, market_data: MarketDataResource
) -> dg.Output[RawBars]:
    """Daily OHLCV bars as the configured source delivered them (sample package, file or Alpaca), up to ``as_of``."""
    raw = market_data.load_daily_bars()
    if config.as_of is not None:
        cutoff = pd.Timestamp(config.as_of)
        dates = pd.to_datetime(raw.frame["date"], errors="coerce")
        # Unparseable dates stay in so the validation checks can name them.
        kept = raw.frame[(dates <= cutoff) | dates.isna()].reset_index(drop=True)
        if kept.empty or dates.min() > cutoff:
            raise dg.Failure(f"{raw.location}: no bars on or before as_of={config.as_of}")
        raw = RawBars(frame=kept, source=raw.source, location=raw.location)
    context.log.info(f"loaded {len(raw.frame)} rows from {raw.source}")
    metadata = frame_metadata(raw.frame)
    metadata["source"] = dg.MetadataValue.text(raw.source)
    metadata["location"] = dg.MetadataValue.text(raw.location)
    metadata["as_of"] = dg.MetadataValue.text(config.as_of or "all data")
    return dg.Output(raw, metadata=metadata)
