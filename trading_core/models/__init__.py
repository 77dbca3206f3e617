"""Supervised forecasting models whose outputs join the reinforcement-learning observation."""
