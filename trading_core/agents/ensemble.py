"""Choosing and combining agents by their validation Sharpe ratio, as FinRL's ensemble strategy does.

FinRL trains several agents, backtests each on a validation window and trades the next window with the one
whose validation Sharpe is highest (:func:`select_by_validation_sharpe`, per rebalance window in
:func:`rolling_selection`). :class:`WeightedEnsemblePolicy` instead blends every agent's continuous action
with weights from the same validation Sharpe ratios.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from trading_core.agents.zoo import load_policy
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtest import run_backtest
from trading_core.evaluation.walk_forward import stitch

MANIFEST = "ensemble.json"


class Policy(Protocol):
    """Anything with stable-baselines3's ``predict`` returning continuous actions."""

    def predict(self, observation: np.ndarray, *args: Any, **kwargs: Any) -> tuple[np.ndarray, Any]: ...


def validation_sharpes(
    candidates: Mapping[str, Policy], validation_features: pd.DataFrame, env_spec: EnvSpec
) -> dict[str, float]:
    """Sharpe ratio of each candidate's backtest over the validation window.

    :param candidates: policies by name
    :param validation_features: features frame of the validation window
    :param env_spec: engine and settings the candidates trained in
    """
    if not candidates:
        raise ValueError("no candidates to evaluate")
    return {
        name: float(run_backtest(policy, validation_features, env_spec).metrics.sharpe)
        for name, policy in candidates.items()
    }


def _best(sharpes: Mapping[str, float]) -> str:
    # NaN never wins; ties go to the first candidate, so the choice does not depend on float noise elsewhere.
    return max(sharpes, key=lambda name: sharpes[name] if math.isfinite(sharpes[name]) else -math.inf)


def select_by_validation_sharpe(
    candidates: Mapping[str, Policy], validation_features: pd.DataFrame, env_spec: EnvSpec
) -> tuple[str, dict[str, float]]:
    """FinRL's selection: the candidate with the highest validation Sharpe (the first one on ties).

    :param candidates: policies by name
    :param validation_features: features frame of the validation window
    :param env_spec: engine and settings the candidates trained in
    :return: the chosen name and every candidate's Sharpe ratio
    """
    sharpes = validation_sharpes(candidates, validation_features, env_spec)
    return _best(sharpes), sharpes


@dataclass(frozen=True)
class RebalanceWindow:
    """A validation window and the trade window that follows it (inclusive dates)."""

    validation_start: pd.Timestamp
    validation_end: pd.Timestamp
    trade_start: pd.Timestamp
    trade_end: pd.Timestamp

    def __post_init__(self) -> None:
        if not (self.validation_start <= self.validation_end < self.trade_start <= self.trade_end):
            raise ValueError(f"validation must precede trading without overlap: {self}")

    def validation_slice(self, features: pd.DataFrame) -> pd.DataFrame:
        return features[features["date"].between(self.validation_start, self.validation_end)]

    def trade_slice(self, features: pd.DataFrame) -> pd.DataFrame:
        return features[features["date"].between(self.trade_start, self.trade_end)]


def rebalance_windows(
    dates: pd.Series | pd.DatetimeIndex, rebalance_window: int = 63, validation_window: int = 63
) -> list[RebalanceWindow]:
    """FinRL's consecutive windows: validate on ``validation_window`` dates, trade ``rebalance_window`` more.

    Window ``k`` trades dates ``[v + k r, v + (k + 1) r)`` after validating on the ``v`` dates before them; a
    trailing partial trade window is dropped, as in FinRL's ``DRLEnsembleAgent``.

    :param dates: dates of the period to trade, validation history included
    :param rebalance_window: trading dates per window
    :param validation_window: validation dates before each trade window
    """
    unique = pd.DatetimeIndex(pd.Series(dates).drop_duplicates().sort_values())
    if rebalance_window < 1 or validation_window < 2:
        raise ValueError("need rebalance_window >= 1 and validation_window >= 2")
    return [
        RebalanceWindow(
            validation_start=unique[end - rebalance_window - validation_window],
            validation_end=unique[end - rebalance_window - 1],
            trade_start=unique[end - rebalance_window],
            trade_end=unique[end - 1],
        )
        for end in range(validation_window + rebalance_window, len(unique) + 1, rebalance_window)
    ]


@dataclass(frozen=True)
class WindowSelection:
    """The agent chosen for one trade window and every candidate's validation Sharpe."""

    window: RebalanceWindow
    chosen: str
    sharpes: dict[str, float] = field(hash=False)


def rolling_selection(
    candidates: Mapping[str, Policy] | Sequence[Mapping[str, Policy]],
    features: pd.DataFrame,
    windows: Sequence[RebalanceWindow],
    env_spec: EnvSpec,
) -> list[WindowSelection]:
    """FinRL's ensemble strategy: per rebalance window, the candidate with the best validation Sharpe.

    Retraining per window happens elsewhere; pass one mapping of pre-trained candidates for every window or
    one mapping per window.

    :param candidates: policies by name, or a list of such mappings aligned with ``windows``
    :param features: features frame covering every window
    :param windows: consecutive windows, e.g. from :func:`rebalance_windows`
    :param env_spec: engine and settings the candidates trained in
    :return: the choice for each trade window, in order
    """
    per_window = [candidates] * len(windows) if isinstance(candidates, Mapping) else list(candidates)
    if len(per_window) != len(windows):
        raise ValueError(f"{len(per_window)} candidate sets for {len(windows)} windows")
    for previous, current in zip(windows, windows[1:], strict=False):
        if current.trade_start <= previous.trade_end:
            raise ValueError(f"windows must be consecutive without overlapping trades: {previous}, {current}")
    selections = []
    for window, pool in zip(windows, per_window, strict=True):
        chosen, sharpes = select_by_validation_sharpe(pool, window.validation_slice(features), env_spec)
        selections.append(WindowSelection(window=window, chosen=chosen, sharpes=sharpes))
    return selections


def softmax_weights(sharpes: Mapping[str, float], temperature: float = 1.0) -> dict[str, float]:
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

    @classmethod
    def from_validation(
        cls,
        members: Mapping[str, Policy],
        validation_features: pd.DataFrame,
        env_spec: EnvSpec,
        temperature: float = 1.0,
    ) -> WeightedEnsemblePolicy:
        """Weights from the members' validation Sharpe ratios through :func:`softmax_weights`.

        :param members: policies by name
        :param validation_features: features frame of the validation window
        :param env_spec: engine and settings the members trained in
        :param temperature: softmax temperature on the Sharpe ratios
        """
        sharpes = validation_sharpes(members, validation_features, env_spec)
        return cls(members, softmax_weights(sharpes, temperature), sharpes=sharpes, temperature=temperature)

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


def trade_selections(
    selections: Sequence[WindowSelection],
    candidates: Mapping[str, Policy],
    features: pd.DataFrame,
    env_spec: EnvSpec,
) -> pd.Series:
    """Trade each window with its chosen candidate and chain the windows into one equity curve.

    :param selections: output of :func:`rolling_selection`
    :param candidates: the policies the selections name
    :param features: features frame covering every trade window
    :param env_spec: engine and settings the candidates trained in
    """
    if not selections:
        raise ValueError("no windows to trade")
    curves = [
        run_backtest(candidates[s.chosen], s.window.trade_slice(features), env_spec).equity
        for s in selections
    ]
    return stitch(curves, env_spec.initial_amount)
