"""Market data: the long bar format, loaders for shipped and file sources, and validation rules."""

from trading_core.data.schema import OHLCV_COLUMNS, PRICE_COLUMNS, REQUIRED_COLUMNS

__all__ = ["OHLCV_COLUMNS", "PRICE_COLUMNS", "REQUIRED_COLUMNS"]
