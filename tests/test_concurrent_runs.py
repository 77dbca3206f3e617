"""Retraining runs that overlap on one state home are serialized, and a fresh home's stores are created once.

Two real processes start together on a fresh home (tests/concurrency_worker.py): both create the MLflow and
Dagster schemas at the same moment, then take the pipeline lock as ``make run`` does; the second says whom it
waits for and runs after the first. Both promote their own version; a third run afterwards works too. In-process
tests cover what the lock does with the instance's runs, and the instance config's run queue limit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import mlflow
import pytest

from pipelines.jobs import (
    champion_monitoring_job,
    full_pipeline_job,
    hyperparameter_search_job,
    paper_trading_review_job,
    weekly_retraining_job,
)
from resources.mlflow_registry import CHAMPION_ALIAS, PREVIOUS_ALIAS, REGISTERED_BY_TAG
from resources.state_home import IN_PROCESS_TAG_KEY, RETRAINING_TAG_KEY, RETRAINING_TAGS, StateHome
from tests import concurrency_worker
from tests.concurrency_worker import ARRIVALS_ENV, EXPECTED_ENV
from trading_assets.evaluation import GATE_STEPS
from trading_core.evaluation.promotion import GateRecord

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORKER_TIMEOUT = 150


def start_workers(root: Path, arrivals: Path, count: int) -> list[subprocess.Popen]:
    arrivals.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, EXPECTED_ENV: str(count), "GX_ANALYTICS_ENABLED": "false"}
    for inherited in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # another test's stores
        env.pop(inherited, None)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.concurrency_worker", str(root), str(arrivals)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    # Release them together once all have imported their libraries, so their first steps collide.
    deadline = time.monotonic() + WORKER_TIMEOUT
    while len(list(arrivals.glob("ready-*"))) < count:
        assert all(w.poll() is None for w in workers), [
            w.communicate() for w in workers if w.poll() is not None
        ]
        assert time.monotonic() < deadline, "the workers never got ready"
        time.sleep(0.05)
    (arrivals / "go").touch()
    return workers


def finish(workers: list[subprocess.Popen]) -> list[tuple[dict, str]]:
    """Each worker's JSON report and the rest of its stdout, once it exited 0."""
    done = []
    for worker in workers:
        out, err = worker.communicate(timeout=WORKER_TIMEOUT)
        assert worker.returncode == 0, (
            f"worker pid {worker.pid} exited {worker.returncode}:\n{out}\n{err[-3000:]}"
        )
        lines = out.strip().splitlines()
        done.append((json.loads(lines[-1]), "\n".join(lines[:-1])))
    return done


def champion(client: mlflow.MlflowClient, alias: str = CHAMPION_ALIAS) -> str:
    return str(client.get_model_version_by_alias("rl_trading_agent", alias).version)


def test_the_worker_judges_the_steps_promotion_needs():
    assert concurrency_worker.GATE_STEPS == GATE_STEPS


def test_two_runs_started_together_on_a_fresh_home_both_finish_one_after_the_other(
    tmp_path, monkeypatch, capsys
):
    root = tmp_path / "home"
    first, second = finish(start_workers(root, tmp_path / "arrivals", 2))
    (earlier, earlier_out), (later, later_out) = sorted(
        [first, second], key=lambda report: report[0]["entered"]
    )
    assert earlier["left"] <= later["entered"], "the two runs overlapped"
    # The later one said once, in one line, whom it waited for; the earlier one never waited.
    waits = [line for line in later_out.splitlines() if line.startswith("waiting for")]
    assert waits == [line for line in waits if f"pid {earlier['pid']} on " in line] and len(waits) == 1
    assert waits[0].startswith(f"waiting for the other pipeline run on {root} (pid {earlier['pid']} on ")
    assert not [line for line in earlier_out.splitlines() if line.startswith("waiting for")]

    home = StateHome(root)
    instance = dg.DagsterInstance.from_config(str(home.dagster_home))
    runs = instance.get_runs(dg.RunsFilter(tags=RETRAINING_TAGS))
    assert {run.run_id for run in runs} == {earlier["run_id"], later["run_id"]}
    assert all(run.status == dg.DagsterRunStatus.SUCCESS and IN_PROCESS_TAG_KEY in run.tags for run in runs)

    # Each run promoted the version it registered, on its own records; the later one is champion.
    # The registry named too: MLflow keeps a process-wide registry URI (and exports it to subprocesses), which an
    # earlier test in this worker may have pointed at its own store.
    uri = home.mlflow_tracking_uri
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    for report in (earlier, later):
        tags = client.get_model_version("rl_trading_agent", report["version"]).tags
        assert tags[REGISTERED_BY_TAG] == report["run_id"]
        assert {record.run_id for record in GateRecord.from_tags(tags)} == {report["run_id"]}
    assert champion(client) == later["version"]
    assert champion(client, PREVIOUS_ALIAS) == earlier["version"]

    # A third run on the now-existing home works and waits for nobody (in this process: it has the imports).
    arrivals = tmp_path / "arrivals-3"
    arrivals.mkdir()
    (arrivals / "go").touch()
    monkeypatch.setenv(EXPECTED_ENV, "1")
    monkeypatch.setenv(ARRIVALS_ENV, str(arrivals))
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster_home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert concurrency_worker.main([str(root), str(arrivals)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    third = json.loads(out[-1])
    assert not [line for line in out if line.startswith("waiting for")] and third["entered"] > later["left"]
    assert champion(client) == third["version"]
    assert len({earlier["version"], later["version"], third["version"]}) == 3


def add_run(instance: dg.DagsterInstance, run_id: str, job: str, status, tags: dict[str, str]) -> None:
    instance.add_run(dg.DagsterRun(job_name=job, run_id=run_id, status=status, tags=tags))


def test_retraining_run_fails_abandoned_in_process_runs_and_waits_for_the_others(tmp_path, monkeypatch):
    home = StateHome(tmp_path / "home")
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster_home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'not-created.db'}")  # no MLflow needed
    home.prepare()
    instance = dg.DagsterInstance.from_config(str(home.dagster_home))
    started = dg.DagsterRunStatus.STARTED
    # A `make run` on this host killed mid-run left its run STARTED: it would hold the run queue forever.
    killed_tags = {**RETRAINING_TAGS, IN_PROCESS_TAG_KEY: f"4242@{socket.gethostname()}"}
    add_run(instance, "killed", "full_pipeline", started, killed_tags)
    # Runs this lock cannot vouch for: one the daemon launched, one in-process on another host.
    add_run(instance, "launched", "weekly_retraining", started, RETRAINING_TAGS)
    add_run(
        instance, "remote", "full_pipeline", started, {**RETRAINING_TAGS, IN_PROCESS_TAG_KEY: "7@other-host"}
    )
    add_run(instance, "monitoring", "monitor_champion", started, {})

    def others_end() -> None:
        time.sleep(0.5)
        other = dg.DagsterInstance.from_config(str(home.dagster_home))
        for run_id in ("launched", "remote"):
            other.report_run_failed(other.get_run_by_id(run_id), "ended")

    lines: list[str] = []
    ender = threading.Thread(target=others_end)
    ender.start()
    started_at = time.monotonic()
    with home.retraining_run(instance, announce=lines.append, poll_seconds=0.05) as tags:
        waited = time.monotonic() - started_at
        status = {
            run_id: instance.get_run_by_id(run_id).status for run_id in ("killed", "launched", "remote")
        }
    ender.join()
    (line,) = lines
    prefix, _, waited_for = line.removesuffix(" to finish").partition("retraining run(s) ")
    assert prefix == "waiting for the Dagster instance's " and set(waited_for.split(", ")) == {
        "launched",
        "remote",
    }
    assert waited >= 0.5
    assert set(status.values()) == {dg.DagsterRunStatus.FAILURE}
    assert instance.get_run_by_id("monitoring").status == started  # not a retraining run: not its business
    assert tags[RETRAINING_TAG_KEY] == RETRAINING_TAGS[RETRAINING_TAG_KEY]
    assert tags[IN_PROCESS_TAG_KEY] == f"{os.getpid()}@{socket.gethostname()}"


def test_instance_config_queues_one_retraining_run_and_only_retraining_jobs_carry_the_tag(
    tmp_path, monkeypatch
):
    home = StateHome(tmp_path / "home")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "elsewhere"))  # neither schema is this test's business
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'not-created.db'}")
    config = home.prepare().dagster_home / "dagster.yaml"
    instance = dg.DagsterInstance.from_config(str(home.dagster_home))
    limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert limits == [{"key": RETRAINING_TAG_KEY, "value": RETRAINING_TAGS[RETRAINING_TAG_KEY], "limit": 1}]
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert not (tmp_path / "not-created.db").exists() and not (tmp_path / "elsewhere").exists()

    for job in (full_pipeline_job, weekly_retraining_job):
        assert dict(job.run_tags) == RETRAINING_TAGS, job.name
    for job in (champion_monitoring_job, hyperparameter_search_job, paper_trading_review_job):
        assert RETRAINING_TAG_KEY not in (job.run_tags or {}), job.name

    # A config an older version of this module wrote is brought up to date; one a person wrote is left alone.
    config.write_text(home.dagster_yaml().split("concurrency:")[0] + "telemetry:\n  enabled: false\n")
    home.prepare()
    assert config.read_text() == home.dagster_yaml()
    own = "storage:\n  sqlite:\n    base_dir: /somewhere/else\n"
    config.write_text(own)
    home.prepare()
    assert config.read_text() == own


def test_pipeline_lock_is_free_again_after_its_holder_raised(tmp_path):
    home = StateHome(tmp_path / "home")
    with pytest.raises(RuntimeError, match="boom"), home.pipeline_lock(announce=pytest.fail):
        raise RuntimeError("boom")
    lines: list[str] = []
    with home.pipeline_lock(announce=lines.append):
        assert (home.root / ".pipeline.holder").read_text().startswith(f"pid {os.getpid()} on ")
    assert lines == [] and not (home.root / ".pipeline.holder").exists()
