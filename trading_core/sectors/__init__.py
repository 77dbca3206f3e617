"""Sectors: a GICS-like sector for every ticker (pytickersymbols offline, a fund table, a user file over both)
and the labels on the market panel that sector-aware allocators and risk limits read."""

from trading_core.sectors.classification import (
    FUND_SECTOR,
    GICS_SECTORS,
    SECTOR_MAP_COLUMNS,
    SECTORS,
    UNKNOWN_SECTOR,
    Classification,
    load_sector_file,
    sector_map,
    unclassified,
    with_sectors,
)

__all__ = [
    "FUND_SECTOR",
    "GICS_SECTORS",
    "SECTORS",
    "SECTOR_MAP_COLUMNS",
    "UNKNOWN_SECTOR",
    "Classification",
    "load_sector_file",
    "sector_map",
    "unclassified",
    "with_sectors",
]
