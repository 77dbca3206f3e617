"""Fakes for tests and demos (the fake Alpaca server): never part of the production image."""
