"""An MLflow ``pyfunc`` wrapper so a registered agent loads and predicts without this project's training code.

The algorithm travels in the logged model's ``model_config`` (``{"algorithm": "sac"}``), so any agent of the
zoo loads through the same wrapper; models logged without it are PPO. A ``decision_spec`` artifact, when logged,
tells live trading how to build observations and orders (:mod:`trading_core.agents.decision_spec`).
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd

SB3_ARTIFACT_KEY = "sb3_model"
DECISION_SPEC_KEY = "decision_spec"


def _decision_spec(context):
    from trading_core.agents.decision_spec import DecisionSpec

    path = (context.artifacts or {}).get(DECISION_SPEC_KEY)
    return DecisionSpec.load(path) if path else None


class StableBaselinesPolicy(mlflow.pyfunc.PythonModel):
    """Predicts deterministic continuous actions (one column per asset) from observation rows."""

    def load_context(self, context) -> None:
        from trading_core.agents.zoo import load_policy

        algorithm = (context.model_config or {}).get("algorithm", "ppo")
        self.model = load_policy(algorithm, context.artifacts[SB3_ARTIFACT_KEY])
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
