"""One resource set per deployment, chosen in one place by ``RL_TRADING_ENV``.

``local`` (default): real sample data shipped with the dependencies, MLflow on sqlite under the state home.
``file``: bars from ``RL_TRADING_DATA_PATH`` (CSV/Parquet, long format), optional VIX from ``RL_TRADING_VIX_PATH``.
``alpaca``: Alpaca historical bars for ``RL_TRADING_TICKERS`` from ``RL_TRADING_START_DATE``.
``MLFLOW_TRACKING_URI`` points every set at another MLflow server or database.
"""

from __future__ import annotations

import os

from resources.market_data import MarketDataResource
from resources.mlflow_registry import MlflowRegistryResource, mlflow_run
from resources.state_home import StateHome
from resources.trading_state import TradingStateResource

# The registry resource's own defaults, named here for the CLIs and the per-run MLflow resource.
EXPERIMENT_NAME: str = MlflowRegistryResource.model_fields["experiment_name"].default
MODEL_NAME: str = MlflowRegistryResource.model_fields["model_name"].default


def _tickers() -> list[str]:
    return [t.strip() for t in os.environ.get("RL_TRADING_TICKERS", "").split(",") if t.strip()]


def market_data_for(env: str) -> MarketDataResource:
    window = {
        "tickers": _tickers(),
        "start_date": os.environ.get("RL_TRADING_START_DATE") or None,
        "end_date": os.environ.get("RL_TRADING_END_DATE") or None,
    }
    if env == "local":
        return MarketDataResource(source="sample", **window)
    if env == "file":
        return MarketDataResource(
            source="csv",
            path=os.environ["RL_TRADING_DATA_PATH"],
            vix_path=os.environ.get("RL_TRADING_VIX_PATH") or None,
            **window,
        )
    if env == "alpaca":
        return MarketDataResource(
            source="alpaca",
            alpaca_url_override=os.environ.get("RL_TRADING_ALPACA_DATA_URL") or None,
            **window,
        )
    raise ValueError(f"RL_TRADING_ENV must be local, file or alpaca, got {env!r}")


def resources_for(env: str | None = None, home: StateHome | None = None) -> dict[str, object]:
    """The resources of a deployment; ``env`` defaults to ``RL_TRADING_ENV`` or ``local``."""
    env = env or os.environ.get("RL_TRADING_ENV", "local")
    home = (home or StateHome.from_env()).prepare()
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or home.mlflow_tracking_uri
    return {
        "market_data": market_data_for(env),
        "model_registry": MlflowRegistryResource(
            tracking_uri=tracking_uri,
            artifact_root=home.mlflow_artifact_root,
            experiment_name=EXPERIMENT_NAME,
            model_name=MODEL_NAME,
        ),
        "trading_state": TradingStateResource(url=home.trading_state_url),
        "mlflow": mlflow_run.configured(
            {
                "experiment_name": EXPERIMENT_NAME,
                "mlflow_tracking_uri": tracking_uri,
                "artifact_root": home.mlflow_artifact_root,
            }
        ),
    }
