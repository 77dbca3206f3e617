"""Sectors of the universe: pytickersymbols' offline classification, with a user file over it."""

import dagster as dg
import pandas as pd

from trading_assets.metadata import markdown_table
from trading_core.sectors import classification


class SectorSettings(dg.Config):
    """Where the sectors come from: pytickersymbols, overridden per ticker by an optional CSV file with columns
    ``tic,sector[,industry]`` (sectors spelled as GICS sector names or ``ETF``)."""

    sector_file: str | None = None


@dg.asset(group_name="features", compute_kind="pytickersymbols")
def sector_map(config: SectorSettings, validated_daily_bars: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """A GICS-like sector and industry for every ticker of the validated bars, and where each came from."""
    overrides = None if config.sector_file is None else classification.load_sector_file(config.sector_file)
    frame = classification.sector_map(sorted(validated_daily_bars["tic"].unique()), overrides)
    counts = frame["sector"].value_counts()
    missing = classification.unclassified(frame)
    metadata = {
        "sectors": markdown_table(frame.to_dict("records")),
        "tickers_per_sector": markdown_table(
            [{"sector": sector, "tickers": int(count)} for sector, count in counts.items()]
        ),
        "sector_count": dg.MetadataValue.int(
            int(frame.loc[frame["source"] != "unclassified", "sector"].nunique())
        ),
        "unclassified_tickers": dg.MetadataValue.text(", ".join(missing) or "none"),
        "sources": dg.MetadataValue.text(
            ", ".join(f"{source}: {count}" for source, count in frame["source"].value_counts().items())
        ),
    }
    return dg.Output(frame, metadata=metadata)


__all__ = ["SectorSettings", "sector_map"]
