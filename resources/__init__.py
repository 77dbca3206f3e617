"""Dagster resources: the only code that reaches market data, MLflow and other outside services."""

from resources.market_data import MarketDataResource
from resources.mlflow_registry import MlflowRegistryResource, mlflow_run
from resources.state_home import StateHome

__all__ = ["MarketDataResource", "MlflowRegistryResource", "StateHome", "mlflow_run"]
