"""Dagster assets and asset checks, one module per pipeline stage; each calls into ``trading_core``."""
