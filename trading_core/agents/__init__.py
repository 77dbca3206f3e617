"""Reinforcement-learning agents and their packaging for the model registry."""
