"""One retraining-like run on a state home in its own process, taking what ``make run`` takes.

``python -m tests.concurrency_worker HOME ARRIVALS``: :meth:`StateHome.prepare` on a possibly fresh home (its
MLflow and Dagster schemas), then :meth:`StateHome.retraining_run`, inside which a one-asset job runs in-process:
it registers a model version, records a passing gate record of every gate step and promotes the version
through the registry's evidence check. Prints one JSON line with what it did.

Processes start together: each one announces itself in the ``ARRIVALS`` folder after its imports, waits until
``ARRIVALS/go`` exists, and the holder of the lock keeps it until every expected process has arrived at the lock
(``RL_TRADING_TEST_EXPECTED``), so the others really find it taken.
"""

import json
import os
import sys
import time
from pathlib import Path

import dagster as dg
import mlflow

from resources.mlflow_registry import REGISTERED_BY_TAG, MlflowRegistryResource
from resources.state_home import RETRAINING_TAGS, StateHome
from trading_core.evaluation.promotion import GateRecord

EXPECTED_ENV = "RL_TRADING_TEST_EXPECTED"
ARRIVALS_ENV = "RL_TRADING_TEST_ARRIVALS"
# trading_assets.evaluation.GATE_STEPS, named here: importing the assets (torch, stable-baselines3) would make
# each process start seconds later.
GATE_STEPS = ("backtest", "stress_tests", "seed_sweep")
WAIT_SECONDS = 60.0


def _wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"concurrency_worker pid {os.getpid()}: gave up waiting for {what}")
        time.sleep(0.02)


@dg.asset
def promoted_version(context: dg.AssetExecutionContext, model_registry: MlflowRegistryResource) -> str:
    """Register a version, judge it in this run, promote it: the registry steps of a retraining run."""
    arrivals = Path(os.environ[ARRIVALS_ENV])
    expected = int(os.environ[EXPECTED_ENV])
    _wait_for(lambda: len(list(arrivals.glob("at-lock-*"))) >= expected, f"{expected} processes at the lock")
    time.sleep(0.5)  # the others are blocked on the lock by now
    run_id = context.op_execution_context.run_id
    uri = model_registry.tracking_uri
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow_run = client.create_run(model_registry.experiment_id())
    version = model_registry.register(
        f"runs:/{mlflow_run.info.run_id}/model", mlflow_run.info.run_id, tags={REGISTERED_BY_TAG: run_id}
    ).version
    for step in GATE_STEPS:
        model_registry.record_gate(GateRecord(step, version, run_id))
    model_registry.promote(version, run_id, GATE_STEPS)
    return version


def main(argv: list[str]) -> int:
    root, arrivals = Path(argv[0]), Path(argv[1])
    home = StateHome(root)
    os.environ["DAGSTER_HOME"] = str(home.dagster_home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ[ARRIVALS_ENV] = str(arrivals)
    (arrivals / f"ready-{os.getpid()}").touch()
    _wait_for((arrivals / "go").exists, "the go signal")

    home.prepare()
    instance = dg.DagsterInstance.get()
    registry = MlflowRegistryResource(
        tracking_uri=home.mlflow_tracking_uri, artifact_root=home.mlflow_artifact_root
    )
    job = dg.Definitions(
        assets=[promoted_version],
        jobs=[dg.define_asset_job("retraining_probe", selection=[promoted_version], tags=RETRAINING_TAGS)],
        resources={"model_registry": registry},
    ).resolve_job_def("retraining_probe")
    (arrivals / f"at-lock-{os.getpid()}").touch()
    with home.retraining_run(instance, poll_seconds=0.2) as tags:
        entered = time.time()
        result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        # Read while holding the lock: the asset's stored value is the next run's to overwrite once it is free.
        version = result.output_for_node("promoted_version") if result.success else None
        left = time.time()
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "entered": entered,
                "left": left,
                "success": result.success,
                "run_id": result.run_id,
                "version": version,
            }
        ),
        flush=True,
    )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
