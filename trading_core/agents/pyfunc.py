"""An MLflow ``pyfunc`` wrapper so a registered agent loads and predicts without this project's training code."""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd

SB3_ARTIFACT_KEY = "sb3_model"


class StableBaselinesPolicy(mlflow.pyfunc.PythonModel):
    """Predicts deterministic actions (one column per asset) from observation rows."""

    def load_context(self, context) -> None:
        from stable_baselines3 import PPO

        self.model = PPO.load(context.artifacts[SB3_ARTIFACT_KEY], device="cpu")

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        observations = np.asarray(model_input, dtype=np.float32)
        actions, _ = self.model.predict(observations, deterministic=True)
        return np.asarray(actions)
