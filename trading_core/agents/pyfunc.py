"""An MLflow ``pyfunc`` wrapper so a registered agent loads and predicts without this project's training code.

The algorithm travels in the logged model's ``model_config`` (``{"algorithm": "sac"}``), so any agent of the
zoo loads through the same wrapper; models logged without it are PPO. The policy's JSON metadata (its observation
normaliser, action semantics and learning curve) travels as the ``sb3_metadata`` artifact, so the loaded model takes
raw observations. A ``decision_spec`` artifact, when logged, tells live trading how to build observations and orders
(:mod:`trading_core.agents.decision_spec`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

SB3_ARTIFACT_KEY = "sb3_model"
SB3_METADATA_KEY = "sb3_metadata"
DECISION_SPEC_KEY = "decision_spec"


def _decision_spec(context):
    from trading_core.agents.decision_spec import DecisionSpec

    path = (context.artifacts or {}).get(DECISION_SPEC_KEY)
    return DecisionSpec.load(path) if path else None


def observation_names(tickers: Sequence[str], feature_names: Sequence[str]) -> list[str]:
    """Column names of FinRL's observation layout (:func:`trading_core.envs.fast.observation_from`): ``cash``,
    ``close_<tic>`` and ``holdings_<tic>`` per asset, then ``<feature>_<tic>`` feature by feature.

    A model's signature and input example carry them; models logged earlier name them ``obs_0 .. obs_N``, and
    both load and predict alike, since the wrapper reads observations by position."""
    per_asset = [f"{field}_{tic}" for field in ("close", "holdings", *feature_names) for tic in tickers]
    return ["cash", *per_asset]


def policy_artifacts(policy, folder: str | Path) -> dict[str, str]:
    """Save a policy into ``folder`` and name its files as the pyfunc's artifacts (weights, and metadata when
    the policy writes any)."""
    weights = policy.save(Path(folder) / "agent")
    weights = Path(weights) if weights is not None else Path(folder) / "agent.zip"
    artifacts = {SB3_ARTIFACT_KEY: str(weights)}
    if weights.with_suffix(".json").exists():
        artifacts[SB3_METADATA_KEY] = str(weights.with_suffix(".json"))
    return artifacts


def log_agent_model(
    policy,
    algorithm: str,
    decision_spec=None,
    example: pd.DataFrame | None = None,
    pip_requirements: list[str] | None = None,
):
    """Log a trained agent as a pyfunc model named ``agent`` in the active MLflow run, with its decision spec.

    :param policy: an SB3 model or a zoo ``TrainedPolicy`` (anything with ``save`` and ``predict``)
    :param algorithm: the zoo algorithm, which picks the class that loads the weights
    :param decision_spec: the :class:`~trading_core.agents.decision_spec.DecisionSpec` live trading needs
    :param example: observation rows; with them the model gets a signature and an input example
    :return: MLflow's ``ModelInfo``
    """
    with tempfile.TemporaryDirectory() as folder:
        artifacts = policy_artifacts(policy, folder)
        if decision_spec is not None:
            artifacts[DECISION_SPEC_KEY] = str(decision_spec.save(Path(folder) / "decision_spec.pkl"))
        signature = None
        if example is not None:
            actions, _ = policy.predict(example.to_numpy(dtype=np.float32), deterministic=True)
            signature = mlflow.models.infer_signature(example, actions)
        return mlflow.pyfunc.log_model(
            name="agent",
            python_model=StableBaselinesPolicy(),
            artifacts=artifacts,
            model_config={"algorithm": algorithm},
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements,
        )


class StableBaselinesPolicy(mlflow.pyfunc.PythonModel):
    """Predicts deterministic continuous actions (one column per action dimension) from raw observation rows."""

    def load_context(self, context) -> None:
        from trading_core.agents.zoo import load_policy

        algorithm = (context.model_config or {}).get("algorithm", "ppo")
        artifacts = context.artifacts
        self.model = load_policy(algorithm, artifacts[SB3_ARTIFACT_KEY], artifacts.get(SB3_METADATA_KEY))
        self.decision_spec = _decision_spec(context)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        observations = np.asarray(model_input, dtype=np.float32)
        actions, _ = self.model.predict(observations, deterministic=True)
        return np.asarray(actions)


ENSEMBLE_ARTIFACT_KEY = "ensemble"


class EnsemblePolicyModel(mlflow.pyfunc.PythonModel):
    """Predicts the weighted ensemble's blended actions; every member travels in the one artifact folder."""

    def load_context(self, context) -> None:
        from trading_core.agents.ensemble import WeightedEnsemblePolicy

        self.model = WeightedEnsemblePolicy.load(context.artifacts[ENSEMBLE_ARTIFACT_KEY])
        self.decision_spec = _decision_spec(context)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        actions, _ = self.model.predict(np.asarray(model_input, dtype=np.float32), deterministic=True)
        return np.asarray(actions)
