"""Domain logic of the RL trading system: data rules, features, environments, agents, backtests, metrics.

Nothing in this package imports Dagster; every stage is usable and tested on its own.
"""
