"""The paper-trading state database as a Dagster resource (sqlite under the state home, PostgreSQL by URL)."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from trading_core.live.state import TradingStateStore


class TradingStateResource(dg.ConfigurableResource):
    """Read access to what paper-trading sessions recorded: orders, fills, decisions, equity, alerts."""

    url: str = Field(description="SQLAlchemy URL of the trading state (never logged with its password)")

    def store(self) -> TradingStateStore:
        store = TradingStateStore(self.url)
        store.create_schema()
        return store
