"""Combining agents: :class:`WeightedEnsemblePolicy` blends every member's continuous action with softmax weights
of their validation Sharpe ratios (chosen by :mod:`trading_core.evaluation.selection`), and saves and loads as
one model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from trading_core.agents.zoo import load_policy

MANIFEST = "ensemble.json"


@dataclass(frozen=True)
class EnsembleConfig:
    """The weighted ensemble's softmax temperature and FinRL's rolling-selection windows.

    :param temperature: softmax temperature on the members' validation Sharpe ratios
    :param rebalance_dates: trading dates per rolling-selection window
    :param validation_dates: validation dates before each trade window
    """

    temperature: float = 1.0
    rebalance_dates: int = 63
    validation_dates: int = 63


class Policy(Protocol):
    """Anything with stable-baselines3's ``predict`` returning continuous actions."""

    def predict(self, observation: np.ndarray, *args: Any, **kwargs: Any) -> tuple[np.ndarray, Any]: ...


def softmax_weights(
    sharpes: Mapping[str, float], temperature: float = EnsembleConfig.temperature
) -> dict[str, float]:
    """Weights ``softmax(sharpe / temperature)``; non-finite Sharpe ratios get zero weight.

    Softmax keeps every member in the blend even when all Sharpe ratios are negative; a small temperature
    approaches picking the best member, a large one equal weights. Equal weights when no Sharpe is finite.

    :param sharpes: validation Sharpe ratio by member
    :param temperature: positive scale of the Sharpe ratios
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not sharpes:
        raise ValueError("no members to weight")
    names = list(sharpes)
    values = np.array([sharpes[name] for name in names], dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return {name: 1.0 / len(names) for name in names}
    scaled = np.where(finite, values / temperature, -np.inf)
    exponentials = np.exp(scaled - scaled[finite].max())
    weights = exponentials / exponentials.sum()
    return {name: float(weight) for name, weight in zip(names, weights, strict=True)}


class WeightedEnsemblePolicy:
    """Blends members' continuous actions: ``clip(sum_i w_i a_i, -1, 1)``.

    :param members: policies by name, each predicting actions in ``[-1, 1]^N``
    :param weights: non-negative weight per member summing to one (used as given, so a saved and restored
        ensemble predicts bit for bit the same)
    :param sharpes: validation Sharpe ratios the weights came from, kept for reporting
    :param temperature: softmax temperature the weights came from, kept for reporting
    """

    def __init__(
        self,
        members: Mapping[str, Policy],
        weights: Mapping[str, float],
        sharpes: Mapping[str, float] | None = None,
        temperature: float | None = None,
    ) -> None:
        if not members or set(members) != set(weights):
            raise ValueError(f"weights {sorted(weights)} must name exactly the members {sorted(members)}")
        values = np.array([weights[name] for name in members], dtype=np.float64)
        if (values < 0).any() or not np.isclose(values.sum(), 1.0, rtol=0, atol=1e-9):
            raise ValueError(f"weights must be non-negative and sum to one, got {dict(weights)}")
        self.members = dict(members)
        self.weights = {name: float(weights[name]) for name in members}
        self.sharpes = None if sharpes is None else {name: float(sharpes[name]) for name in members}
        self.temperature = temperature

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, None]:
        """The weighted average of the members' actions for one observation or a batch, clipped to [-1, 1]."""
        blended: np.ndarray | None = None
        for name, member in self.members.items():
            action, _ = member.predict(observation, deterministic=deterministic)
            term = self.weights[name] * np.asarray(action, dtype=np.float64)
            blended = term if blended is None else blended + term
        assert blended is not None  # members is never empty
        return np.clip(blended, -1.0, 1.0).astype(np.float32), None

    def describe(self) -> dict[str, float]:
        """Flat weights (and Sharpe ratios) for experiment tracking."""
        flat = {f"weight/{name}": weight for name, weight in self.weights.items()}
        if self.sharpes is not None:
            flat.update({f"validation_sharpe/{name}": sharpe for name, sharpe in self.sharpes.items()})
        return flat

    def save(self, directory: str | Path) -> Path:
        """Save every member (``TrainedPolicy.save``) and a JSON manifest of algorithms and weights.

        :param directory: folder to write; created when missing
        :return: path of the manifest
        """
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        entries = []
        for index, (name, member) in enumerate(self.members.items()):
            algorithm = getattr(member, "algorithm", None)
            if algorithm is None or not hasattr(member, "save"):
                raise TypeError(f"member {name!r} is not a TrainedPolicy and cannot be saved")
            # Files are named by position so member names need not be valid file names.
            model_file = member.save(target / f"member_{index}_{algorithm}")
            entries.append(
                {
                    "name": name,
                    "algorithm": algorithm,
                    "file": model_file.name,
                    "weight": self.weights[name],
                    "sharpe": None if self.sharpes is None else self.sharpes[name],
                }
            )
        manifest = {"format": 1, "temperature": self.temperature, "members": entries}
        path = target / MANIFEST
        path.write_text(json.dumps(manifest, indent=2))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> WeightedEnsemblePolicy:
        """Restore an ensemble saved by :meth:`save`; it predicts exactly what the saved one did.

        :param directory: folder written by :meth:`save`
        """
        source = Path(directory)
        manifest = json.loads((source / MANIFEST).read_text())
        entries = manifest["members"]
        members = {
            entry["name"]: load_policy(entry["algorithm"], source / entry["file"]) for entry in entries
        }
        weights = {entry["name"]: entry["weight"] for entry in entries}
        has_sharpes = all(entry["sharpe"] is not None for entry in entries)
        sharpes = {entry["name"]: entry["sharpe"] for entry in entries} if has_sharpes else None
        return cls(members, weights, sharpes=sharpes, temperature=manifest["temperature"])
