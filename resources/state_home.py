"""One project-local folder for all state: Dagster home, MLflow store and paper-trading state.

``RL_TRADING_HOME`` overrides the default ``<project root>/.rl_trading`` (git-ignored). Processes that share a
home coordinate through file locks in it: a short one around creating the stores (:meth:`StateHome.prepare`),
and the pipeline lock that lets one retraining run at a time work on the home (:meth:`StateHome.retraining_run`).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

if TYPE_CHECKING:
    from dagster import DagsterInstance, DagsterRun

STATE_HOME_ENV = "RL_TRADING_HOME"
TRADING_STATE_ENV = "RL_TRADING_STATE_DB_URL"
PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Runs of the retraining graph carry this tag; the instance config lets one such run be in progress at a time.
RETRAINING_TAG_KEY = "rl_trading/run_group"
RETRAINING_TAGS = {RETRAINING_TAG_KEY: "retraining"}
# The domain's loggers (trading_core.*): the instance captures them into each run's event log.
DOMAIN_LOGGER = "trading_core"
# Set on a run executed in-process (``make run``) to its process, ``pid@host``.
IN_PROCESS_TAG_KEY = "rl_trading/in_process"

_STORES_LOCK = ".stores.lock"
_STORES_READY = ".stores.ready"
_PIPELINE_LOCK = ".pipeline.lock"
_PIPELINE_HOLDER = ".pipeline.holder"

_GENERATED = "# Written by resources/state_home.py"
_DAGSTER_YAML = """\
{generated}: sqlite storage under this folder, one retraining run at a time, no telemetry.
# StateHome.prepare() rewrites this file while the line above comes first: delete that line to keep your edits.
storage:
  sqlite:
    base_dir: {storage}
local_artifact_storage:
  module: dagster._core.storage.root
  class: LocalArtifactStorage
  config:
    base_dir: {artifacts}
concurrency:
  runs:
    tag_concurrency_limits:
      - key: {tag_key}
        value: {tag_value}
        limit: 1
python_logs:
  # Progress lines of the domain code (e.g. each finished Ray task of a fan-out) join the run's event log.
  managed_python_loggers:
    - {domain_logger}
  python_log_level: INFO
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

    def dagster_yaml(self) -> str:
        """The instance config this home writes: sqlite storage here, the retraining runs queued one at a time."""
        return _DAGSTER_YAML.format(
            generated=_GENERATED,
            storage=self.dagster_home / "storage",
            artifacts=self.dagster_home,
            tag_key=RETRAINING_TAG_KEY,
            tag_value=RETRAINING_TAGS[RETRAINING_TAG_KEY],
            domain_logger=DOMAIN_LOGGER,
        )

    def prepare(self) -> StateHome:
        """Create the folders, Dagster's instance config and the schemas of the stores kept here.

        Everything happens under one file lock, so processes starting together on a fresh home never run the
        MLflow or Dagster migrations side by side. An instance config without the generated first line is
        left as it is; existing data is never touched.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(self.root / _STORES_LOCK):
            for folder in (self.dagster_home, self.mlflow_dir / "artifacts", self.root / "live"):
                folder.mkdir(parents=True, exist_ok=True)
            config, wanted = self.dagster_home / "dagster.yaml", self.dagster_yaml()
            current = config.read_text() if config.exists() else None
            if current is None or (current.startswith(_GENERATED) and current != wanted):
                _write_atomically(config, wanted)
            self._create_schemas()
        return self

    def _create_schemas(self) -> None:
        """The sqlite schemas of this home's MLflow store and Dagster instance, once (a marker file says so).

        A store configured elsewhere (``MLFLOW_TRACKING_URI``, another ``DAGSTER_HOME``) manages its own.
        """
        ready_file = self.root / _STORES_READY
        done = set(ready_file.read_text().splitlines()) if ready_file.exists() else set()
        ready = set(done)
        dagster_home = Path(os.environ.get("DAGSTER_HOME") or self.dagster_home).resolve()
        if os.environ.get("MLFLOW_TRACKING_URI", self.mlflow_tracking_uri) == self.mlflow_tracking_uri and (
            self.mlflow_tracking_uri not in ready
        ):
            _create_mlflow_schema(self.mlflow_tracking_uri, self.mlflow_artifact_root)
            ready.add(self.mlflow_tracking_uri)
        if dagster_home == self.dagster_home.resolve() and str(dagster_home) not in ready:
            _create_dagster_schema(dagster_home)
            ready.add(str(dagster_home))
        if ready != done:
            _write_atomically(ready_file, "\n".join(sorted(ready)) + "\n")

    @contextmanager
    def pipeline_lock(self, announce: Callable[[str], None] = print) -> Iterator[None]:
        """Hold this home's pipeline lock. A second holder announces in one line whom it waits for, then waits.

        The operating system releases the lock of a process that dies, so a killed run never blocks the next.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.root / _PIPELINE_LOCK)
        holder_file = self.root / _PIPELINE_HOLDER
        try:
            lock.acquire(blocking=False)
        except Timeout:
            holder = holder_file.read_text().strip() if holder_file.exists() else "another process"
            announce(f"waiting for the other pipeline run on {self.root} ({holder}) to finish")
            lock.acquire()
        try:
            holder_file.write_text(
                f"pid {os.getpid()} on {socket.gethostname()}, since {datetime.now():%H:%M:%S}"
            )
            yield
        finally:
            holder_file.unlink(missing_ok=True)
            lock.release()

    @contextmanager
    def retraining_run(
        self, instance: DagsterInstance, announce: Callable[[str], None] = print, poll_seconds: float = 5.0
    ) -> Iterator[dict[str, str]]:
        """Room for one in-process retraining run on this home: the tags that run must carry.

        Holds the pipeline lock (one ``make run`` at a time); marks failed the retraining runs that earlier
        in-process runs on this host left in progress when their process died (holding the lock proves none of
        them is alive); and waits while any other retraining run is in progress (one a schedule, a sensor or
        the UI launched). The tags put the run in the instance's queue limit, so the daemon launches no
        retraining run until this one ends.

        :param poll_seconds: how often to look again at the runs it waits for
        """
        here = socket.gethostname()
        with self.pipeline_lock(announce):
            for run in _in_progress_retraining_runs(instance):
                if run.tags.get(IN_PROCESS_TAG_KEY, "").rpartition("@")[2] == here:
                    instance.report_run_failed(
                        run,
                        f"its in-process run ({run.tags[IN_PROCESS_TAG_KEY]}) ended before the run did; marked "
                        f"failed by pid {os.getpid()}, which holds the pipeline lock of {self.root}",
                    )
            others = [run.run_id for run in _in_progress_retraining_runs(instance)]
            if others:
                announce(
                    f"waiting for the Dagster instance's retraining run(s) {', '.join(others)} to finish"
                )
            while others:
                time.sleep(poll_seconds)
                others = [run.run_id for run in _in_progress_retraining_runs(instance)]
            yield {**RETRAINING_TAGS, IN_PROCESS_TAG_KEY: f"{os.getpid()}@{here}"}


def _in_progress_retraining_runs(instance: DagsterInstance) -> list[DagsterRun]:
    """Retraining runs holding a worker: the statuses the run queue counts against its limits. Queued runs are
    left out: they wait for the queue, which the in-process run's tags hold."""
    from dagster import DagsterRunStatus, RunsFilter

    statuses = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
    return list(instance.get_runs(RunsFilter(tags=RETRAINING_TAGS, statuses=statuses)))


def _write_atomically(path: Path, text: str) -> None:
    """Replace a file in one step, so that a reader never sees it half written."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    partial.replace(path)


def _create_mlflow_schema(tracking_uri: str, artifact_root: str) -> None:
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

    # The tracking store creates and migrates the tables (its Default experiment keeps artifacts under the
    # home); the registry store checks them.
    for store in (TrackingStore(tracking_uri, artifact_root), RegistryStore(tracking_uri)):
        store.engine.dispose()


def _create_dagster_schema(dagster_home: Path) -> None:
    from dagster import DagsterInstance

    instance = DagsterInstance.from_config(str(dagster_home))
    try:
        instance.get_runs(limit=1)  # run storage
        instance.all_instigator_state()  # schedule storage
    finally:
        instance.dispose()
