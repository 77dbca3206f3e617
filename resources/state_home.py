"""One project-local folder for all state: Dagster home, MLflow store and paper-trading state.

``RL_TRADING_HOME`` overrides the default ``<project root>/.rl_trading`` (git-ignored).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STATE_HOME_ENV = "RL_TRADING_HOME"
TRADING_STATE_ENV = "RL_TRADING_STATE_DB_URL"
PROJECT_ROOT = Path(__file__).resolve().parents[1]

_DAGSTER_YAML = """\
# Written by resources/state_home.py: sqlite storage under this folder, no telemetry.
storage:
  sqlite:
    base_dir: {storage}
local_artifact_storage:
  module: dagster._core.storage.root
  class: LocalArtifactStorage
  config:
    base_dir: {artifacts}
telemetry:
  enabled: false
"""


@dataclass(frozen=True)
class StateHome:
    """Paths and URIs derived from the state folder."""

    root: Path

    @classmethod
    def from_env(cls) -> StateHome:
        return cls(Path(os.environ.get(STATE_HOME_ENV, PROJECT_ROOT / ".rl_trading")).resolve())

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    @property
    def mlflow_dir(self) -> Path:
        return self.root / "mlflow"

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> str:
        return (self.mlflow_dir / "artifacts").as_uri()

    @property
    def trading_state_url(self) -> str:
        """Paper-trading state: ``RL_TRADING_STATE_DB_URL`` (e.g. PostgreSQL), else sqlite under this folder."""
        return os.environ.get(TRADING_STATE_ENV) or f"sqlite:///{self.root / 'live' / 'trading_state.db'}"

    def prepare(self) -> StateHome:
        """Create the folders and Dagster's instance config if they are missing; never touches existing state."""
        for folder in (self.dagster_home, self.mlflow_dir / "artifacts", self.root / "live"):
            folder.mkdir(parents=True, exist_ok=True)
        dagster_yaml = self.dagster_home / "dagster.yaml"
        if not dagster_yaml.exists():
            dagster_yaml.write_text(
                _DAGSTER_YAML.format(storage=self.dagster_home / "storage", artifacts=self.dagster_home)
            )
        return self
