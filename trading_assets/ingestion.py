"""Stage 1: raw market bars from the market-data resource."""

import dagster as dg

from resources.market_data import MarketDataResource, RawBars
from trading_assets.metadata import frame_metadata


@dg.asset(group_name="ingestion", compute_kind="pandas")
def raw_daily_bars(context: dg.AssetExecutionContext, market_data: MarketDataResource) -> dg.Output[RawBars]:
    """Daily OHLCV bars as the configured source delivered them (sample package, file or Alpaca)."""
    raw = market_data.load_daily_bars()
    context.log.info(f"loaded {len(raw.frame)} rows from {raw.source}")
    metadata = frame_metadata(raw.frame)
    metadata["source"] = dg.MetadataValue.text(raw.source)
    metadata["location"] = dg.MetadataValue.text(raw.location)
    return dg.Output(raw, metadata=metadata)
