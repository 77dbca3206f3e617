"""The market-data part of the fake Alpaca server, which lives in :mod:`resources.fake_alpaca`."""

from __future__ import annotations

from resources.fake_alpaca import FakeAlpacaDataServer

__all__ = ["FakeAlpacaDataServer"]
