"""One resource set per deployment, chosen in one place by ``RL_TRADING_ENV``.

``local`` (default): real sample data shipped with the dependencies, MLflow on sqlite under the state home.
``file``: bars from ``RL_TRADING_DATA_PATH`` (CSV/Parquet, long format), optional VIX from ``RL_TRADING_VIX_PATH``.
``alpaca``: Alpaca historical bars for ``RL_TRADING_TICKERS`` from ``RL_TRADING_START_DATE``.
``local`` and ``file`` read intraday bars for the minute-bar jobs from ``RL_TRADING_INTRADAY_PATH`` when it is set.
``MLFLOW_TRACKING_URI`` points every set at another MLflow server or database.

:func:`environment_problems` checks every variable the pipeline reads (these, ``RL_TRADING_HOME``,
``RL_TRADING_STATE_DB_URL``, ``RAY_ADDRESS``) without touching any store, one line per problem.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from resources.market_data import (
    ALPACA_KEY_ENV,
    ALPACA_SECRET_ENV,
    MarketDataResource,
    market_data_problems,
)
from resources.mlflow_registry import MlflowRegistryResource, mlflow_run
from resources.state_home import STATE_HOME_ENV, TRADING_STATE_ENV, StateHome
from resources.trading_state import TradingStateResource

ENV_VARIABLE = "RL_TRADING_ENV"
ENVIRONMENTS: tuple[str, ...] = ("local", "file", "alpaca")
MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"
RAY_ADDRESS_ENV = "RAY_ADDRESS"
# The environment variable each market-data setting comes from.
MARKET_DATA_ENV: dict[str, str] = {
    "tickers": "RL_TRADING_TICKERS",
    "start_date": "RL_TRADING_START_DATE",
    "end_date": "RL_TRADING_END_DATE",
    "path": "RL_TRADING_DATA_PATH",
    "vix_path": "RL_TRADING_VIX_PATH",
    "alpaca_url_override": "RL_TRADING_ALPACA_DATA_URL",
    "intraday_path": "RL_TRADING_INTRADAY_PATH",
}
_SOURCES = {"local": "sample", "file": "csv", "alpaca": "alpaca"}
_MLFLOW_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


class EnvironmentProblems(ValueError):
    """Environment variables the pipeline cannot work with; one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# The registry resource's own defaults, named here for the CLIs and the per-run MLflow resource.
EXPERIMENT_NAME: str = MlflowRegistryResource.model_fields["experiment_name"].default
MODEL_NAME: str = MlflowRegistryResource.model_fields["model_name"].default


def deployment(environ: Mapping[str, str] | None = None) -> str:
    """``RL_TRADING_ENV``, ``local`` when unset or empty (not checked: see :func:`environment_problems`)."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV_VARIABLE) or "local"


def market_data_settings(env: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The market-data resource's fields for deployment ``env``, read from the environment.

    :raises EnvironmentProblems: when ``env`` is none of :data:`ENVIRONMENTS`
    """
    environ = os.environ if environ is None else environ
    if env not in ENVIRONMENTS:
        raise EnvironmentProblems([f"{ENV_VARIABLE}={env!r}: expected one of {', '.join(ENVIRONMENTS)}"])

    def value(field: str) -> str | None:
        return environ.get(MARKET_DATA_ENV[field]) or None

    settings: dict[str, Any] = {
        "source": _SOURCES[env],
        "tickers": [t.strip() for t in (value("tickers") or "").split(",") if t.strip()],
        "start_date": value("start_date"),
        "end_date": value("end_date"),
    }
    if env == "file":
        settings.update(path=value("path"), vix_path=value("vix_path"))
    if env != "alpaca":  # Alpaca serves intraday bars itself
        settings["intraday_path"] = value("intraday_path")
    if env == "alpaca":
        settings["alpaca_url_override"] = value("alpaca_url_override")
    return settings


def _market_data_lines(env: str, problems) -> list[str]:
    lines = []
    for problem in problems:
        line = problem.line(MARKET_DATA_ENV.get(problem.field, problem.field))
        lines.append(line + (f" ({ENV_VARIABLE}={env})" if problem.value is None else ""))
    return lines


def market_data_for(env: str) -> MarketDataResource:
    """The market-data resource of deployment ``env``.

    :raises EnvironmentProblems: naming each variable that is unknown, missing or malformed
    """
    settings = market_data_settings(env)
    problems = market_data_problems(settings, check_sources=False)
    if problems:
        raise EnvironmentProblems(_market_data_lines(env, problems))
    return MarketDataResource(**settings)


def _masked(value: str) -> str:
    """A URL with its credentials (``user:password@``) hidden, so it can be printed."""
    if "@" not in value:
        return value
    head, _, host = value.rpartition("@")
    scheme, separator, _ = head.partition("://")
    return f"{scheme}{separator}***@{host}" if separator else f"***@{host}"


def _directory_problem(name: str, value: str) -> str | None:
    """Whether ``value`` is a directory this process can write, or one it can create."""
    path = Path(value).resolve()
    if path.exists() and not path.is_dir():
        return f"{name}={value!r}: expected a directory (it is a file)"
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"{name}={value!r}: expected a directory this user can write ({existing} is not writable)"
    return None


def _database_url_problem(name: str, value: str, expected: str) -> str | None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(value)
        url.get_dialect()
    except NoSuchModuleError:  # an ArgumentError too: caught first
        return f"{name}={_masked(value)!r}: expected {expected} (no installed driver for {url.drivername!r})"
    except ArgumentError:
        return f"{name}={_masked(value)!r}: expected {expected}"
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        folder = Path(url.database).resolve().parent
        if not folder.is_dir():
            return f"{name}={_masked(value)!r}: expected a sqlite file in an existing folder ({folder} is missing)"
    return None


def _mlflow_uri_problem(value: str) -> str | None:
    expected = "a folder, file:///path, sqlite:///path.db, postgresql://… or an http(s):// tracking server"
    scheme = urlparse(value).scheme.split("+")[0]
    if scheme in _MLFLOW_DB_SCHEMES:
        return _database_url_problem(MLFLOW_URI_ENV, value, expected)
    if scheme in ("http", "https"):
        return None if urlparse(value).netloc else f"{MLFLOW_URI_ENV}={_masked(value)!r}: expected {expected}"
    if scheme in ("", "file", "databricks"):
        return None
    return f"{MLFLOW_URI_ENV}={_masked(value)!r}: expected {expected}"


def _ray_address_problem(value: str) -> str | None:
    if value in ("auto", "local"):
        return None
    parsed = urlparse(value if "://" in value else f"ray-gcs://{value}")
    try:
        port_ok = parsed.port is not None and 0 < parsed.port < 65536
    except ValueError:
        port_ok = False
    if parsed.scheme in ("ray", "ray-gcs") and parsed.hostname and port_ok:
        return None
    return f"{RAY_ADDRESS_ENV}={value!r}: expected auto, local, HOST:PORT or ray://HOST:PORT"


def environment_problems(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per environment variable the pipeline cannot work with, reading no store and changing nothing.

    Checks ``RL_TRADING_ENV`` and the variables its deployment needs (present, dates parse and are ordered, the
    data file exists and is readable with the bars columns, the tickers exist in the sample package or file), the
    Alpaca keys (only whether they are set; values are never printed), ``RL_TRADING_HOME``,
    ``RL_TRADING_STATE_DB_URL``, ``MLFLOW_TRACKING_URI`` and ``RAY_ADDRESS``. Passwords in URLs are masked.
    """
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    env = deployment(environ)
    try:
        settings = market_data_settings(env, environ)
    except EnvironmentProblems as error:
        problems += error.problems
    else:
        problems += _market_data_lines(env, market_data_problems(settings))
    if env == "alpaca":
        for names, what in ((ALPACA_KEY_ENV, "API key"), (ALPACA_SECRET_ENV, "secret key")):
            if not any(environ.get(n) for n in names):
                problems.append(
                    f"{names[0]} is not set: expected the Alpaca {what} (or {names[1]}) ({ENV_VARIABLE}=alpaca)"
                )
    checks = (
        (STATE_HOME_ENV, lambda v: _directory_problem(STATE_HOME_ENV, v)),
        (
            TRADING_STATE_ENV,
            lambda v: _database_url_problem(
                TRADING_STATE_ENV, v, "a SQLAlchemy URL such as postgresql+psycopg2://user@host:5432/db"
            ),
        ),
        (MLFLOW_URI_ENV, _mlflow_uri_problem),
        (RAY_ADDRESS_ENV, _ray_address_problem),
    )
    for name, check in checks:
        if environ.get(name):
            problem = check(environ[name])
            if problem:
                problems.append(problem)
    return problems


def resources_for(env: str | None = None, home: StateHome | None = None) -> dict[str, object]:
    """The resources of a deployment; ``env`` defaults to ``RL_TRADING_ENV`` or ``local``."""
    env = env or deployment()
    market_data = market_data_for(env)  # first: a bad environment leaves the state home untouched
    home = (home or StateHome.from_env()).prepare()
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or home.mlflow_tracking_uri
    return {
        "market_data": market_data,
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
