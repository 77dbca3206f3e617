"""Production stores on a real PostgreSQL: MLflow's tracking/registry backend and Dagster's run storage.

Uses ``RL_TRADING_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``) to create a
throw-away database per test; skipped with the reason when no server answers there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse, urlunparse

import dagster as dg
import pytest

from resources.mlflow_registry import MlflowRegistryResource
from trading_core.data.validation import RULES

ADMIN_URL = os.environ.get("RL_TRADING_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _connect(url: str):
    import psycopg2

    connection = psycopg2.connect(url, connect_timeout=3)
    connection.autocommit = True
    return connection


def sqlalchemy_url(url: str) -> str:
    """SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; the project ships psycopg2."""
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


@pytest.fixture()
def postgres_database() -> Iterator[str]:
    """URL of a fresh, empty database, dropped afterwards."""
    import psycopg2

    try:
        admin = _connect(ADMIN_URL)
    except psycopg2.OperationalError as error:
        pytest.skip(f"no PostgreSQL reachable at {ADMIN_URL}: {str(error).strip()}")
    name = f"rl_trading_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunparse(urlparse(ADMIN_URL)._replace(path=f"/{name}"))
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_mlflow_registry_on_postgres(postgres_database, tmp_path):
    import mlflow

    tracking_uri = sqlalchemy_url(postgres_database)
    registry = MlflowRegistryResource(
        tracking_uri=tracking_uri, artifact_root=(tmp_path / "artifacts").as_uri()
    )
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.create_experiment("pg", artifact_location=registry.artifact_root + "/pg")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "test_sharpe", 0.5)
    version = registry.register(f"runs:/{run.info.run_id}/agent", run.info.run_id, tags={"seed": "1"})
    registry.set_alias(version.version, "champion")
    assert registry.version_for_alias("champion") == version.version == "1"
    with _connect(postgres_database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT alias, version FROM registered_model_aliases")
        assert cursor.fetchall() == [("champion", 1)]


def test_dagster_run_storage_on_postgres(postgres_database, tmp_path, slice_csv):
    from pipelines.definitions import all_assets
    from resources.market_data import MarketDataResource

    (tmp_path / "dagster.yaml").write_text(
        f"storage:\n  postgres:\n    postgres_url: {sqlalchemy_url(postgres_database)}\ntelemetry:\n  enabled: false\n"
    )
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    selection = [
        a
        for a in all_assets
        if {k.to_user_string() for k in a.keys} <= {"raw_daily_bars", "validated_daily_bars"}
    ]
    result = dg.materialize(
        selection,
        instance=instance,
        resources={
            "market_data": MarketDataResource(source="csv", path=str(slice_csv)),
            "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "storage")),
        },
    )
    assert result.success
    with _connect(postgres_database) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM runs WHERE run_id = %s", (result.run_id,))
        assert cursor.fetchone()[0] == 1
        cursor.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_CHECK_EVALUATION'",
            (result.run_id,),
        )
        assert cursor.fetchone()[0] == len(RULES)  # one evaluation per validation rule
    instance.dispose()
