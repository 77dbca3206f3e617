"""MLflow: a per-Dagster-run tracking resource (dagster-mlflow) and a model-registry resource."""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import dagster as dg
from dagster_mlflow.resources import CONFIG_SCHEMA as DAGSTER_MLFLOW_CONFIG_SCHEMA
from dagster_mlflow.resources import MlFlow
from pydantic import Field

from trading_core.evaluation.model_card import GateCheck, model_card_markdown, version_description
from trading_core.evaluation.promotion import GateRecord, GateResult, promotion_refusal

CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
PREVIOUS_ALIAS = "previous"
TRIAL_TAG = "rl_trading.trial"
# The model-version tag naming the pipeline (Dagster) run that registered the version: promotion checks it.
REGISTERED_BY_TAG = "pipeline_run_id"
# Run tags of the walk-forward's start-mode comparison: its verdict (scratch / warm_start) and why.
START_MODE_VERDICT_TAG = "retraining.start_mode_verdict"
START_MODE_REASON_TAG = "retraining.start_mode_verdict_reason"
# When the verdict was recorded, in nanoseconds since the epoch (fixed width, so its text sorts as its number).
START_MODE_RECORDED_TAG = "retraining.start_mode_verdict_recorded_ns"
# The experiment tag MLflow 3's UI reads to open an experiment as model training (not as GenAI traces).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# The agent-version tag naming the forecaster ("name/version") whose outputs the agent observes.
FORECASTER_TAG = "cnn_lstm_model"
# Version tags holding each gate check's figures: ``gate_check.<step>.<check>`` (apart from ``gate.<step>``,
# the records promotion trusts).
GATE_CHECK_TAG_PREFIX = "gate_check."
EVALUATION_FOLDER = "evaluation"
GATE_FILE = "promotion_gate.json"
MODEL_CARD_FILE = "model_card.md"
# Facts of a version's model card (data, periods, features, costs, risk limits, gate steps), in its run's
# ``evaluation`` folder, recorded by the backtest.
MODEL_CARD_FACTS_FILE = "model_card_facts.json"
# Passes over the gate records while other steps may write theirs (see :meth:`_publish_gate`).
_PUBLISH_PASSES = 5
AGENT_MODEL_DESCRIPTION = (
    "Trading agents trained, backtested and gated by the rl_trading Dagster pipeline. Aliases: `champion` trades "
    "(paper or live), `challenger` is the latest candidate registered, `previous` is the rollback target. Each "
    "version's description holds its gate verdict and key test metrics; its run holds `model_card.md`, "
    "`evaluation/promotion_gate.json` and the tearsheet."
)
FORECASTER_MODEL_DESCRIPTION = (
    "CNN+LSTM forecasts of next-day returns (mean, log-variance, embedding) that the trading agents observe. Its "
    "aliases follow the agent versions observing it: the forecaster of the `champion` agent holds `champion`, "
    "of the `challenger` holds `challenger`."
)
OTHER_MODEL_DESCRIPTION = "Registered by the rl_trading Dagster pipeline."
# What older code wrote as every model's description: replaced by the descriptions above.
_PLACEHOLDER_DESCRIPTION = "trained by the rl_trading Dagster pipeline"


def ensure_experiment(tracking_uri: str, experiment_name: str, artifact_root: str) -> str:
    """Create the experiment with its artifacts under ``artifact_root`` unless it exists; return its id."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return client.create_experiment(
            experiment_name,
            artifact_location=f"{artifact_root}/{experiment_name}",
            tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND},
        )
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # made by older code: the UI would guess GenAI
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return experiment.experiment_id


@dg.resource(
    config_schema={
        **DAGSTER_MLFLOW_CONFIG_SCHEMA,
        "artifact_root": dg.Field(str, description="where the experiment keeps artifacts (a file:// URI)"),
    },
    description="dagster-mlflow's run-per-Dagster-run MLflow tracking, with the experiment's artifact root set.",
)
def mlflow_run(context):
    """dagster-mlflow's ``MlFlow`` resource, after making sure the experiment stores artifacts in the state home.

    With a sqlite backend MLflow would otherwise put artifacts in ``./mlruns`` of whatever folder the process
    runs in.
    """
    config = context.resource_config
    ensure_experiment(config["mlflow_tracking_uri"], config["experiment_name"], config["artifact_root"])
    tracking = MlFlow(context)
    yield tracking
    tracking.cleanup_on_error()


class PromotionRefused(ValueError):
    """The registry's records do not bind a version to the run that tries to promote it."""


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version in the registry."""

    name: str
    version: str
    run_id: str
    source: str


@dataclass(frozen=True)
class ArtifactLinks:
    """A run artifact's run page and raw file in the MLflow UI, and its location in the artifact store."""

    run_page: str
    file: str
    location: str


@dataclass(frozen=True)
class StartModeVerdict:
    """The latest walk-forward verdict between warm starts and training from scratch.

    :param verdict: ``scratch`` or ``warm_start``
    :param reason: the rule's one-line reason
    :param run_id: the MLflow run it was recorded on
    """

    verdict: str
    reason: str
    run_id: str


@dataclass(frozen=True)
class ChampionAgent:
    """The version holding ``champion``, its policy (SB3 weights and normaliser), its decision spec and the last
    date it trained on (its run's ``data_train_end`` tag; ``None`` when the run has none)."""

    version: RegisteredVersion
    policy: object
    decision_spec: object | None
    train_end: str | None

    @property
    def label(self) -> str:
        """``name/version``, as a ``warm_started_from`` tag names it."""
        return f"{self.version.name}/{self.version.version}"


def _gate_checks(tags: dict[str, str]) -> list[GateCheck]:
    """The gate checks among a version's tags, by step then check."""
    checks = []
    for key, value in sorted(tags.items()):
        if key.startswith(GATE_CHECK_TAG_PREFIX):
            step = key.removeprefix(GATE_CHECK_TAG_PREFIX).split(".")[0]
            checks.append(GateCheck(step, GateResult(**json.loads(value))))
    return checks


_METRIC_NAME_REFUSED = re.compile(r"[^0-9A-Za-z_\-. :/]")


def metric_name(name: str) -> str:
    """``name`` with every character MLflow refuses in a metric name replaced by ``_``."""
    return _METRIC_NAME_REFUSED.sub("_", name)


class MlflowRegistryResource(dg.ConfigurableResource):
    """Registers, aliases and loads model versions; logs evaluation results to existing runs."""

    tracking_uri: str = Field(description="MLflow tracking and registry URI")
    artifact_root: str = Field(description="artifact root for experiments this resource creates")
    experiment_name: str = Field(default="rl_trading", description="MLflow experiment of the pipeline")
    model_name: str = Field(default="rl_trading_agent", description="registered model name of trading agents")

    def _client(self):
        import mlflow

        # MLflow's registry store resolves logged models through the process-wide tracking URI, so a step
        # running in its own process (Dagster's default executor) must point it at this store too.
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        return mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def register(
        self, model_uri: str, run_id: str, tags: dict[str, str], model_name: str | None = None
    ) -> RegisteredVersion:
        """Create a new version of a registered model (:attr:`model_name` by default) from a logged model."""
        from mlflow.exceptions import MlflowException

        name = model_name or self.model_name
        client = self._client()
        description = AGENT_MODEL_DESCRIPTION if name == self.model_name else OTHER_MODEL_DESCRIPTION
        try:
            registered = client.get_registered_model(name)
            if registered.description in (None, "", _PLACEHOLDER_DESCRIPTION):
                client.update_registered_model(name, description=description)
        except MlflowException:
            client.create_registered_model(name, description=description)
        version = client.create_model_version(name, model_uri, run_id=run_id, tags=tags)
        return RegisteredVersion(name, str(version.version), run_id, model_uri)

    def experiment_id(self) -> str:
        """Id of the pipeline's experiment, created with its artifact root when missing."""
        return ensure_experiment(self.tracking_uri, self.experiment_name, self.artifact_root)

    def set_alias(self, version: str, alias: str, model_name: str | None = None) -> None:
        """Give ``alias`` to ``version``; the forecaster the version observes (its ``cnn_lstm_model`` tag) gets
        the same alias, so the pair reads the same in both models, and a new champion is named in the registered
        model's description."""
        name = model_name or self.model_name
        client = self._client()
        client.set_registered_model_alias(name, alias, version)
        paired = client.get_model_version(name, version).tags.get(FORECASTER_TAG, "")
        if paired.count("/") == 1:
            self._alias_forecaster(paired, alias)
        if alias == CHAMPION_ALIAS:
            self._describe_champion(version, name)

    def _alias_forecaster(self, forecaster: str, alias: str) -> None:
        """Set ``alias`` on the forecaster ``name/version`` when the registry holds it (a tag of a version
        registered elsewhere may name a forecaster this registry never saw)."""
        from mlflow.exceptions import MlflowException

        name, version = forecaster.split("/")
        client = self._client()
        try:
            registered = client.get_registered_model(name)
            client.get_model_version(name, version)
        except MlflowException:
            return
        client.set_registered_model_alias(name, alias, version)
        if registered.description in (None, "", _PLACEHOLDER_DESCRIPTION, OTHER_MODEL_DESCRIPTION):
            client.update_registered_model(name, description=FORECASTER_MODEL_DESCRIPTION)

    def version_for_alias(self, alias: str, model_name: str | None = None) -> str | None:
        """The version holding ``alias``, or ``None`` when no version holds it."""
        from mlflow.exceptions import MlflowException

        try:
            return str(
                self._client().get_model_version_by_alias(model_name or self.model_name, alias).version
            )
        except MlflowException:
            return None

    def rollback(self) -> tuple[str, str]:
        """Give ``champion`` back to the version holding ``previous``; the demoted version becomes ``previous``.

        :return: (demoted version, restored version)
        """
        champion, previous = self.version_for_alias(CHAMPION_ALIAS), self.version_for_alias(PREVIOUS_ALIAS)
        if champion is None or previous is None:
            raise ValueError(
                f"{self.model_name}: rollback needs versions holding both '{CHAMPION_ALIAS}' (has {champion}) "
                f"and '{PREVIOUS_ALIAS}' (has {previous})"
            )
        self.set_alias(previous, CHAMPION_ALIAS)
        self.set_alias(champion, PREVIOUS_ALIAS)
        self.set_version_tags(champion, {"rolled_back": "true"})
        return champion, previous

    def log_trial(
        self,
        run_name: str,
        params: dict[str, object],
        metrics: dict[str, float],
        kind: str,
        curves: dict[str, list[tuple[int, float]]] | None = None,
    ) -> str:
        """Record one trial (a trained-and-evaluated configuration) as its own run; returns its id.

        :param curves: step metrics, ``(step, value)`` points by name (e.g. the reward learning curve)
        """
        client = self._client()
        run = client.create_run(self.experiment_id(), run_name=run_name, tags={TRIAL_TAG: kind})
        for key, value in params.items():
            client.log_param(run.info.run_id, key, value)
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, float(value))
        for key, points in (curves or {}).items():
            for step, value in points:
                client.log_metric(run.info.run_id, key, float(value), step=int(step))
        client.set_terminated(run.info.run_id)
        return run.info.run_id

    def trial_count(self) -> int:
        """Runs of the experiment recorded as trials: what the deflated Sharpe ratio deflates for."""
        runs = self._client().search_runs([self.experiment_id()], max_results=50_000)
        return sum(1 for run in runs if TRIAL_TAG in run.data.tags)

    def set_version_tags(self, version: str, tags: dict[str, str], model_name: str | None = None) -> None:
        client = self._client()
        for key, value in tags.items():
            client.set_model_version_tag(model_name or self.model_name, version, key, value)

    def version_tags(self, version: str, model_name: str | None = None) -> dict[str, str]:
        """The tags of a registered version (not of its run): registration provenance and gate records."""
        return dict(self._client().get_model_version(model_name or self.model_name, version).tags)

    def record_gate(
        self, record: GateRecord, model_name: str | None = None, checks: Sequence[GateResult] = ()
    ) -> None:
        """Store a gate step's verdict on the version it judged, so that promotion can read it back.

        :param checks: the step's checks with their figures: with them the version's full gate record
            (``evaluation/promotion_gate.json``), model card and description are written again
        """
        tags = {record.tag_key: record.tag_value()}
        tags |= {
            f"{GATE_CHECK_TAG_PREFIX}{record.step}.{check.name}": json.dumps(asdict(check))
            for check in checks
        }
        self.set_version_tags(record.version, tags, model_name)
        if checks:
            self._publish_gate(record.version, model_name or self.model_name)

    def gate_checks(self, version: str, model_name: str | None = None) -> list[GateCheck]:
        """Every gate check recorded on a version, by step then check."""
        return _gate_checks(self.version_tags(version, model_name))

    def _publish_gate(self, version: str, name: str) -> None:
        """Write the version's gate record, model card and description from every check recorded so far.

        Gate steps run in parallel, each publishing after recording its checks: a step reads the records again
        after writing and writes once more when another step recorded meanwhile, so the last file written holds
        every step's checks.
        """
        client = self._client()
        run_id = client.get_model_version(name, version).run_id
        checks = self.gate_checks(version, name)
        for _ in range(_PUBLISH_PASSES):
            facts = self._model_card_facts(run_id)
            metrics = dict(client.get_run(run_id).data.metrics)
            steps = list(facts.get("gate_steps", []))
            gate = {
                "model": f"{name} v{version}",
                "verdict": version_description(checks, metrics, steps).splitlines()[0].strip("*"),
                "checks": [check.row() for check in checks],
            }
            self.log_evaluation(run_id, metrics={}, files={}, tables={GATE_FILE: gate})
            card = model_card_markdown({"model": f"{name} v{version}", **facts}, checks, metrics, steps)
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / MODEL_CARD_FILE
                path.write_text(card)
                client.log_artifact(run_id, str(path))
            client.update_model_version(
                name, version, description=version_description(checks, metrics, steps)
            )
            again = self.gate_checks(version, name)
            if [c.row() for c in again] == [c.row() for c in checks]:
                return
            checks = again

    def _model_card_facts(self, run_id: str) -> dict:
        """The model card facts the backtest recorded on a run; empty before it has."""
        from mlflow.exceptions import MlflowException

        client = self._client()
        with tempfile.TemporaryDirectory() as folder:
            try:
                local = client.download_artifacts(
                    run_id, f"{EVALUATION_FOLDER}/{MODEL_CARD_FACTS_FILE}", folder
                )
            except (MlflowException, OSError):
                return {}
            return json.loads(Path(local).read_text())

    def artifact_links(self, run_id: str, artifact_path: str, ui_url: str) -> ArtifactLinks:
        """Where a run's artifact is: its run page and raw file in the MLflow UI at ``ui_url``, and its location
        in the artifact store (a local path for a ``file:`` store)."""
        info = self._client().get_run(run_id).info
        base = ui_url.rstrip("/")
        location = f"{info.artifact_uri.rstrip('/')}/{artifact_path}"
        return ArtifactLinks(
            run_page=f"{base}/#/experiments/{info.experiment_id}/runs/{run_id}/artifactPath/{artifact_path}",
            file=f"{base}/get-artifact?path={quote(artifact_path)}&run_uuid={run_id}",
            location=unquote(urlparse(location).path) if location.startswith("file:") else location,
        )

    def promote(
        self, version: str, run_id: str, required: Sequence[str], model_name: str | None = None
    ) -> str | None:
        """Give ``champion`` to ``version`` when the registry's own records bind it to ``run_id``: the run
        registered it and left a passing record of every ``required`` gate step. The former champion becomes
        ``previous``.

        :return: the former champion's version (``None``: there was none)
        :raises PromotionRefused: naming every record that is missing, foreign or failed
        """
        tags = self.version_tags(version, model_name)
        refusal = promotion_refusal(
            version, run_id, tags.get(REGISTERED_BY_TAG), GateRecord.from_tags(tags), required
        )
        if refusal is not None:
            raise PromotionRefused(f"{model_name or self.model_name} v{version}: {refusal}")
        former = self.version_for_alias(CHAMPION_ALIAS, model_name)
        if former and former != version:
            self.set_alias(former, PREVIOUS_ALIAS, model_name)
        self.set_alias(version, CHAMPION_ALIAS, model_name)
        return former

    def _describe_champion(self, version: str, name: str) -> None:
        """The registered model's description, naming its champion and the champion's verdict and figures."""
        client = self._client()
        summary = client.get_model_version(name, version).description or "no gate record"
        base = AGENT_MODEL_DESCRIPTION if name == self.model_name else OTHER_MODEL_DESCRIPTION
        client.update_registered_model(name, description=f"{base}\n\n## Champion: v{version}\n\n{summary}")

    def load_policy(self, version: str, model_name: str | None = None):
        """Load a registered agent (or ensemble) through its pyfunc flavour and return the policy inside."""
        import mlflow

        self._client()
        pyfunc_model = mlflow.pyfunc.load_model(f"models:/{model_name or self.model_name}/{version}")
        return pyfunc_model.unwrap_python_model().model

    def load_logged_policy(self, model_uri: str):
        """Load a logged (not necessarily registered) agent through its pyfunc flavour: the policy inside."""
        import mlflow

        self._client()
        return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().model

    def version_run_tags(self, version: str, model_name: str | None = None) -> dict[str, str]:
        """Tags of the run that produced a registered version (data ranges, hashes, code version)."""
        client = self._client()
        run_id = client.get_model_version(model_name or self.model_name, version).run_id
        return dict(client.get_run(run_id).data.tags)

    def load_decision_bundle(self, version: str, model_name: str | None = None):
        """(policy, decision spec) of a registered agent or ensemble; the spec is ``None`` for models logged
        without one.

        :raises PickledStateError: the version's spec was pickled by older code (refused, never unpickled)
        :raises StoredStateError: its spec artifact is corrupt or foreign
        """
        import mlflow

        from trading_core.runtime.stored_json import PickledStateError, StoredStateError

        self._client()
        name = model_name or self.model_name
        try:
            wrapper = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        except PickledStateError:
            raise PickledStateError(
                f"decision spec of {name} v{version} is in the old pickle format (pickles are never loaded: "
                "they can run code); retrain or re-register the model"
            ) from None
        except StoredStateError as error:
            raise StoredStateError(f"decision spec of {name} v{version} refused: {error}") from None
        python_model = wrapper.unwrap_python_model()
        return python_model.model, getattr(python_model, "decision_spec", None)

    def load_champion(self, model_name: str | None = None) -> ChampionAgent | None:
        """The champion with its SB3 weights (through its pyfunc) and decision spec; ``None`` when no version holds
        the alias."""
        name = model_name or self.model_name
        version = self.version_for_alias(CHAMPION_ALIAS, name)
        if version is None:
            return None
        record = self._client().get_model_version(name, version)
        policy, spec = self.load_decision_bundle(version, name)
        train_end = self.version_run_tags(version, name).get("data_train_end")
        return ChampionAgent(
            RegisteredVersion(name, version, record.run_id, record.source), policy, spec, train_end
        )

    def record_start_mode_verdict(self, run_id: str, verdict: str, reason: str) -> None:
        """Tag a run with the walk-forward's start-mode verdict, which the ``auto`` start mode reads back."""
        if verdict not in ("scratch", "warm_start"):
            raise ValueError(f"verdict must be scratch or warm_start, got {verdict!r}")
        client = self._client()
        client.set_tag(run_id, START_MODE_VERDICT_TAG, verdict)
        client.set_tag(run_id, START_MODE_REASON_TAG, reason)
        client.set_tag(run_id, START_MODE_RECORDED_TAG, f"{time.time_ns():020d}")

    def latest_start_mode_verdict(self) -> StartModeVerdict | None:
        """The experiment's most recently recorded start-mode verdict; ``None`` when no run carries one."""
        runs = self._client().search_runs(
            [self.experiment_id()],
            filter_string=f"tags.`{START_MODE_VERDICT_TAG}` LIKE '%'",
            order_by=[f"tags.`{START_MODE_RECORDED_TAG}` DESC", "attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            return None
        tags = runs[0].data.tags
        return StartModeVerdict(
            tags[START_MODE_VERDICT_TAG], tags.get(START_MODE_REASON_TAG, ""), runs[0].info.run_id
        )

    def load_forecaster(self, model_uri: str):
        """The CNN+LSTM behind ``models:/<name>/<version>`` with its input normalization, ready to add features."""
        from trading_core.models.cnn_lstm import TrainedForecaster

        name, version = model_uri.removeprefix("models:/").split("/")
        run_id = self._client().get_model_version(name, version).run_id
        with tempfile.TemporaryDirectory() as folder:
            local = self._client().download_artifacts(run_id, "forecaster", folder)
            return TrainedForecaster.load(local)

    def log_evaluation(
        self,
        run_id: str,
        metrics: dict[str, float],
        files: dict[str, bytes],
        tables: dict[str, dict] | None = None,
    ) -> None:
        """Add metrics, files and JSON tables to an existing run (the run that trained the model); characters
        MLflow refuses in a metric name (a sized candidate's ``+``) become ``_``."""
        client = self._client()
        for key, value in metrics.items():
            client.log_metric(run_id, metric_name(key), float(value))
        with tempfile.TemporaryDirectory() as folder:
            for name, content in files.items():
                path = Path(folder) / name
                path.write_bytes(content)
                client.log_artifact(run_id, str(path), artifact_path="evaluation")
            for name, table in (tables or {}).items():
                path = Path(folder) / name
                path.write_text(json.dumps(table, indent=2, default=str))
                client.log_artifact(run_id, str(path), artifact_path="evaluation")
