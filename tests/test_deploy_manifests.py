"""Deployment files agree with each other and with the code: Dockerfile, Kubernetes objects, Helm values, CI.

No Docker daemon or cluster runs here, so these are static checks: every YAML parses; the agent's probes,
container port, Service and ServiceMonitor line up; secrets only ever come from Secrets and the Secret template
holds placeholders; the Helm values use key names of the dagster chart; every module a manifest starts exists;
the alert rules name metrics the live-metrics module really exports.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = PROJECT_ROOT / "deploy" / "k8s"
HELM_VALUES = PROJECT_ROOT / "deploy" / "helm" / "dagster-values.yaml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
CI_WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "ci.yml"
WORKSPACE = PROJECT_ROOT / "workspace.yaml"
LIVE_METRICS = PROJECT_ROOT / "trading_core" / "monitoring" / "live_metrics.py"
PAPER_TRADING = PROJECT_ROOT / "pipelines" / "paper_trading.py"

NAMESPACE = "rl-trading"
NON_ROOT_UID = 10001
MONITOR_PORT = 9108
METRIC_PREFIX = "rl_trading"
PROJECT_PACKAGES = frozenset({"trading_core", "trading_assets", "resources", "pipelines", "benchmarks"})
# Written in parallel with these manifests; a missing one skips (with this reason) instead of failing.
PENDING_MODULES = {"pipelines.paper_trading": "the paper-trading agent module is not in the repository yet"}

# Environment variables that carry credentials: they may only come from a Secret.
SECRET_ENV_VARS = frozenset(
    {
        "ALPACA_API_KEY",
        "ALPACA_SECRET_KEY",
        "APCA_API_KEY_ID",
        "APCA_API_SECRET_KEY",
        "RL_TRADING_STATE_DB_URL",
        "MLFLOW_TRACKING_URI",
        "RL_TRADING_ALERT_WEBHOOK_URL",
        "DAGSTER_PG_PASSWORD",
    }
)
SECRET_LIKE_NAME = re.compile(r"KEY|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|DB_URL|WEBHOOK", re.IGNORECASE)
PLACEHOLDER = re.compile(r"<[^<>]+>")
# Alpaca key ids look like PK/AK + 16-18 upper-case alphanumerics; secrets are long random tokens.
ALPACA_KEY_ID = re.compile(r"\b[PA]K[A-Z0-9]{14,}\b")
LONG_TOKEN = re.compile(r"[A-Za-z0-9+/=_\-]{32,}")
URL_PASSWORD = re.compile(r"://[^:/@\s]+:([^@\s]+)@")

# Key names of the official dagster/dagster chart, read from its helm/dagster/values.yaml and the user-deployment
# schema helm/dagster/schema/schema/charts/dagster_user_deployments/subschema/user_deployments.py.
CHART_TOP_LEVEL_KEYS = frozenset(
    {
        "global",
        "nameOverride",
        "fullnameOverride",
        "rbacEnabled",
        "imagePullSecrets",
        "dagsterWebserver",
        "computeLogManager",
        "pythonLogs",
        "dagster-user-deployments",
        "pipelineRun",
        "scheduler",
        "runLauncher",
        "postgresql",
        "generatePostgresqlPasswordSecret",
        "generateCeleryConfigSecret",
        "rabbitmq",
        "redis",
        "flower",
        "ingress",
        "dagsterDaemon",
        "busybox",
        "extraManifests",
        "migrate",
        "telemetry",
        "serviceAccount",
        "retention",
        "additionalInstanceConfig",
    }
)
USER_DEPLOYMENTS_KEYS = frozenset({"enabled", "enableSubchart", "imagePullSecrets", "deployments"})
USER_DEPLOYMENT_KEYS = frozenset(
    {
        "name",
        "image",
        "dagsterApiGrpcArgs",
        "codeServerArgs",
        "includeConfigInLaunchedRuns",
        "instanceConfig",
        "deploymentNamespace",
        "port",
        "env",
        "envConfigMaps",
        "envSecrets",
        "annotations",
        "nodeSelector",
        "affinity",
        "tolerations",
        "podSecurityContext",
        "securityContext",
        "resources",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
        "labels",
        "volumeMounts",
        "volumes",
        "schedulerName",
        "initContainers",
        "sidecarContainers",
        "deploymentStrategy",
    }
)
K8S_RUN_LAUNCHER_KEYS = frozenset(
    {
        "image",
        "imagePullPolicy",
        "jobNamespace",
        "loadInclusterConfig",
        "kubeconfigFile",
        "envConfigMaps",
        "envSecrets",
        "envVars",
        "volumes",
        "volumeMounts",
        "labels",
        "resources",
        "schedulerName",
        "failPodOnRunFailure",
        "securityContext",
        "runK8sConfig",
    }
)
RUN_K8S_CONFIG_KEYS = frozenset(
    {"containerConfig", "podTemplateSpecMetadata", "podSpecConfig", "jobSpecConfig", "jobMetadata"}
)
DAEMON_KEYS = frozenset(
    {
        "enabled",
        "image",
        "heartbeatTolerance",
        "runCoordinator",
        "runMonitoring",
        "runRetries",
        "sensors",
        "schedules",
        "env",
        "envConfigMaps",
        "envSecrets",
        "deploymentLabels",
        "labels",
        "volumes",
        "volumeMounts",
        "annotations",
        "nodeSelector",
        "affinity",
        "tolerations",
        "podSecurityContext",
        "securityContext",
        "resources",
        "schedulerName",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
    }
)
POSTGRESQL_KEYS = frozenset(
    {
        "enabled",
        "image",
        "postgresqlHost",
        "postgresqlUsername",
        "postgresqlPassword",
        "postgresqlDatabase",
        "postgresqlParams",
        "postgresqlScheme",
        "service",
    }
)


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file.

    :param path: the YAML file
    """
    with path.open() as stream:
        return [document for document in yaml.safe_load_all(stream) if document is not None]


def k8s_objects() -> list[dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s (the kustomization file is not one)."""
    return [
        document
        for path in sorted(K8S_DIR.glob("*.yaml"))
        for document in load_documents(path)
        if document.get("kind") != "Kustomization"
    ]


def find_objects(kind: str) -> list[dict[str, Any]]:
    """The objects of one kind in deploy/k8s.

    :param kind: the Kubernetes kind, e.g. ``Deployment``
    """
    return [document for document in k8s_objects() if document["kind"] == kind]


def find_object(kind: str, name: str) -> dict[str, Any]:
    """The one object of a kind and name in deploy/k8s.

    :param kind: the Kubernetes kind
    :param name: its ``metadata.name``
    """
    matches = [document for document in find_objects(kind) if document["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name!r} in {K8S_DIR}, found {len(matches)}"
    return matches[0]


def agent_deployment() -> dict[str, Any]:
    return find_object("Deployment", "rl-trading-agent")


def agent_container() -> dict[str, Any]:
    (container,) = agent_deployment()["spec"]["template"]["spec"]["containers"]
    return container


def helm_values() -> dict[str, Any]:
    (values,) = load_documents(HELM_VALUES)
    return values


def code_server_deployment() -> dict[str, Any]:
    (deployment,) = helm_values()["dagster-user-deployments"]["deployments"]
    return deployment


def resolve_port(port: int | str, container: dict[str, Any]) -> int:
    """The container port number a probe or Service refers to, by number or by name.

    :param port: a port number or a container port name
    :param container: the container spec declaring its ports
    """
    if isinstance(port, int):
        return port
    by_name = {entry["name"]: entry["containerPort"] for entry in container.get("ports", [])}
    assert port in by_name, f"port name {port!r} is not declared by container {container['name']!r}"
    return by_name[port]


def flag_value(args: list[str], flag: str) -> str:
    """The value after ``flag`` in an argument list.

    :param args: the argument list
    :param flag: e.g. ``--monitor-port``
    """
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def workspace_modules(path: Path) -> set[str]:
    """The Python modules a Dagster workspace file loads.

    :param path: the workspace.yaml
    """
    (workspace,) = load_documents(path)
    return {
        entry["python_module"]["module_name"] for entry in workspace["load_from"] if "python_module" in entry
    }


def modules_in_command(argv: list[str]) -> set[str]:
    """Project modules a command line starts or imports (``-m``, ``python -c`` imports, ``-w`` workspaces).

    :param argv: the command, exec form; ``sh -c SCRIPT`` is split into the script's words
    """
    if argv[:1] and argv[0] in {"sh", "bash", "/bin/sh", "/bin/bash"} and "-c" in argv:
        argv = shlex.split(argv[argv.index("-c") + 1])
    modules: set[str] = set()
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag in {"-m", "--module-name"}:
            modules.add(value)
        elif flag == "-c":
            modules.update(re.findall(r"(?:from|import)\s+([A-Za-z_][\w.]*)", value))
        elif flag in {"-w", "--workspace"}:
            modules.update(workspace_modules(PROJECT_ROOT / value))
    return {module for module in modules if module.split(".")[0] in PROJECT_PACKAGES}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, continuation lines joined and comments dropped.

    :param text: the Dockerfile's text
    """
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, also inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def dockerfile_command(arguments: str) -> list[str]:
    """A CMD/ENTRYPOINT argument as an argv list (exec form JSON, or shell form run by ``sh -c``).

    :param arguments: the instruction's arguments
    """
    if arguments.startswith("["):
        return json.loads(arguments)
    return ["sh", "-c", arguments]


def entrypoint_modules() -> dict[str, str]:
    """Every project module the image, the agent Deployment and the Helm values start: module -> where."""
    found: dict[str, str] = {}
    text = DOCKERFILE.read_text()
    for keyword, arguments in dockerfile_instructions(text):
        if keyword in {"CMD", "ENTRYPOINT"}:
            for module in modules_in_command(dockerfile_command(arguments)):
                found.setdefault(module, f"Dockerfile {keyword}")
    # The entrypoints documented in the Dockerfile's header comment.
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            for module in re.findall(r"-m\s+([A-Za-z_][\w.]*)", line):
                if module.split(".")[0] in PROJECT_PACKAGES:
                    found.setdefault(module, "Dockerfile comment")
    container = agent_container()
    for module in modules_in_command(container["command"] + container.get("args", [])):
        found.setdefault(module, "deploy/k8s agent Deployment")
    deployment = code_server_deployment()
    for module in modules_in_command(
        deployment.get("codeServerArgs") or deployment.get("dagsterApiGrpcArgs")
    ):
        found.setdefault(module, "deploy/helm code server")
    return found


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def all_containers() -> list[dict[str, Any]]:
    """Containers of every workload in deploy/k8s."""
    containers = []
    for document in k8s_objects():
        pod_spec = document.get("spec", {}).get("template", {}).get("spec")
        if pod_spec:
            containers += pod_spec.get("containers", []) + pod_spec.get("initContainers", [])
    return containers


def rule_metric_names() -> set[str]:
    """Metric names the PrometheusRule expressions read."""
    names: set[str] = set()
    for rule_object in find_objects("PrometheusRule"):
        for group in rule_object["spec"]["groups"]:
            for rule in group["rules"]:
                names.update(re.findall(rf"\b{METRIC_PREFIX}_[a-z0-9_]+\b", rule["expr"]))
    return names


def ci_workflow() -> dict[str, Any]:
    (workflow,) = load_documents(CI_WORKFLOW)
    return workflow


def workflow_steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job.get("steps", [])


# ---------------------------------------------------------------- parsing and object hygiene


@pytest.mark.parametrize(
    "path",
    [*sorted(K8S_DIR.glob("*.yaml")), HELM_VALUES, CI_WORKFLOW, WORKSPACE],
    ids=lambda path: str(path.relative_to(PROJECT_ROOT)),
)
def test_every_yaml_file_parses(path: Path) -> None:
    documents = load_documents(path)
    assert documents, f"{path} has no YAML document"
    assert all(isinstance(document, dict) for document in documents)


def test_k8s_objects_are_complete_and_namespaced() -> None:
    objects = k8s_objects()
    kinds = {document["kind"] for document in objects}
    assert {"Namespace", "Deployment", "Service", "ConfigMap", "Secret", "PrometheusRule"} <= kinds
    assert "CronJob" not in kinds, "the weekly retraining is a Dagster schedule, not a CronJob"
    for document in objects:
        assert document.get("apiVersion") and document["metadata"].get("name"), document
        if document["kind"] != "Namespace":
            assert document["metadata"].get("namespace") == NAMESPACE, document["metadata"]
    assert find_object("Namespace", NAMESPACE)


def test_kustomization_applies_existing_files_but_never_the_secret_template() -> None:
    (kustomization,) = load_documents(K8S_DIR / "kustomization.yaml")
    listed = kustomization["resources"]
    for name in listed:
        assert (K8S_DIR / name).is_file(), f"kustomization lists missing {name}"
        assert not any(document.get("kind") == "Secret" for document in load_documents(K8S_DIR / name)), (
            f"{name} holds a Secret: re-applying the folder would overwrite the real one with placeholders"
        )
    assert "agent-deployment.yaml" in listed and "agent-service.yaml" in listed


# ---------------------------------------------------------------- the agent Deployment and its Service


def test_agent_is_one_replica_replaced_by_recreate() -> None:
    spec = agent_deployment()["spec"]
    assert spec["replicas"] == 1
    # RollingUpdate would start the new agent before stopping the old: two agents on one account.
    assert spec["strategy"]["type"] == "Recreate"


def test_agent_probes_hit_health_endpoints_on_the_declared_monitor_port() -> None:
    container = agent_container()
    declared = {entry["containerPort"] for entry in container["ports"]}
    assert declared == {MONITOR_PORT}
    assert int(flag_value(container["args"], "--monitor-port")) == MONITOR_PORT
    # The monitor server binds 127.0.0.1 unless told otherwise; the kubelet probes the pod IP.
    assert flag_value(container["args"], "--monitor-host") == "0.0.0.0"

    expected_paths = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe_name, path in expected_paths.items():
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == path, probe_name
        assert resolve_port(probe["port"], container) == MONITOR_PORT, probe_name


def test_service_exposes_the_monitor_port_with_prometheus_annotations() -> None:
    container = agent_container()
    pod_labels = agent_deployment()["spec"]["template"]["metadata"]["labels"]
    service = find_object("Service", "rl-trading-agent")
    selector = service["spec"]["selector"]
    assert selector.items() <= pod_labels.items(), "the Service does not select the agent's pods"
    assert agent_deployment()["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    (port,) = service["spec"]["ports"]
    assert port["port"] == MONITOR_PORT
    assert resolve_port(port["targetPort"], container) == MONITOR_PORT
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(MONITOR_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    # Stale data makes the agent unready, which is when its metrics matter most.
    assert service["spec"]["publishNotReadyAddresses"] is True

    monitor = find_object("ServiceMonitor", "rl-trading-agent")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} == {port["name"]}


def test_agent_resources_are_the_chosen_requests_and_limits() -> None:
    resources = agent_container()["resources"]
    assert resources["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert resources["limits"] == {"cpu": "2", "memory": "4Gi"}


def test_agent_runs_as_non_root_with_a_read_only_root_filesystem() -> None:
    pod_spec = agent_deployment()["spec"]["template"]["spec"]
    container = agent_container()
    for context in (pod_spec["securityContext"], container["securityContext"]):
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == NON_ROOT_UID != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]

    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert set(mounts.values()) <= volumes.keys(), "a volumeMount names an undeclared volume"
    assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must be a writable emptyDir"
    claim = volumes[mounts["/home/app/state"]]["persistentVolumeClaim"]["claimName"]
    assert find_object("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]


def test_agent_command_flags_exist_in_the_paper_trading_cli() -> None:
    if not PAPER_TRADING.is_file():
        pytest.skip(PENDING_MODULES["pipelines.paper_trading"])
    source = PAPER_TRADING.read_text()
    for flag in (arg for arg in agent_container()["args"] if arg.startswith("--")):
        assert f'"{flag}"' in source or f"'{flag}'" in source, (
            f"{PAPER_TRADING.name} defines no {flag} option"
        )


# ---------------------------------------------------------------- secrets


def test_secret_template_holds_placeholders_only() -> None:
    secrets = find_objects("Secret")
    assert {secret["metadata"]["name"] for secret in secrets} >= {
        "rl-trading-secrets",
        "dagster-postgresql-secret",
    }
    for secret in secrets:
        name = secret["metadata"]["name"]
        assert "data" not in secret, (
            f"{name}: base64 `data` could hide a real value; use stringData placeholders"
        )
        for key, value in secret["stringData"].items():
            assert PLACEHOLDER.search(value), f"{name}.{key} is not a <placeholder>"
            assert not ALPACA_KEY_ID.search(value), f"{name}.{key} looks like a real Alpaca key id"
            assert not LONG_TOKEN.search(value), f"{name}.{key} holds a long token-like string"
            for password in URL_PASSWORD.findall(value):
                assert PLACEHOLDER.fullmatch(password), f"{name}.{key} embeds a password in its URL"


def test_secret_env_vars_come_from_secrets_never_from_a_configmap() -> None:
    config_maps = {config_map["metadata"]["name"]: config_map for config_map in find_objects("ConfigMap")}
    secrets = {secret["metadata"]["name"]: secret["stringData"] for secret in find_objects("Secret")}
    for name, config_map in config_maps.items():
        leaked = [
            key
            for key in config_map.get("data", {})
            if key in SECRET_ENV_VARS or SECRET_LIKE_NAME.search(key)
        ]
        assert not leaked, f"ConfigMap {name} holds secret settings {leaked}"

    containers = all_containers()
    assert containers
    for container in containers:
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in config_maps
        for entry in container.get("env", []):
            if entry["name"] in SECRET_ENV_VARS or SECRET_LIKE_NAME.search(entry["name"]):
                assert "value" not in entry, f"{entry['name']} is written into the manifest"
                reference = entry["valueFrom"]["secretKeyRef"]
                assert reference["key"] in secrets[reference["name"]], f"{entry['name']}: no such Secret key"
    agent_env = {entry["name"] for entry in agent_container()["env"]}
    assert {"ALPACA_API_KEY", "ALPACA_SECRET_KEY", "RL_TRADING_STATE_DB_URL"} <= agent_env


def test_helm_values_take_settings_from_the_deploy_objects_and_secrets_from_secrets() -> None:
    config_maps = {config_map["metadata"]["name"] for config_map in find_objects("ConfigMap")}
    secrets = {secret["metadata"]["name"]: secret["stringData"] for secret in find_objects("Secret")}
    claims = {claim["metadata"]["name"] for claim in find_objects("PersistentVolumeClaim")}
    launcher = helm_values()["runLauncher"]["config"]["k8sRunLauncher"]
    for pod_config in (code_server_deployment(), launcher):
        assert {entry["name"] for entry in pod_config["envConfigMaps"]} <= config_maps
        assert {entry["name"] for entry in pod_config["envSecrets"]} <= secrets.keys()
        for entry in pod_config.get("env", []):
            assert not (entry["name"] in SECRET_ENV_VARS or SECRET_LIKE_NAME.search(entry["name"])), entry
        volume_claims = {volume["persistentVolumeClaim"]["claimName"] for volume in pod_config["volumes"]}
        assert volume_claims <= claims
    postgres_secret = helm_values()["global"]["postgresqlSecretName"]
    assert "postgresql-password" in secrets[postgres_secret]


# ---------------------------------------------------------------- Dagster Helm values


def test_helm_values_use_key_names_of_the_dagster_chart() -> None:
    values = helm_values()
    assert values.keys() <= CHART_TOP_LEVEL_KEYS, values.keys() - CHART_TOP_LEVEL_KEYS
    assert values["dagster-user-deployments"].keys() <= USER_DEPLOYMENTS_KEYS
    for deployment in values["dagster-user-deployments"]["deployments"]:
        assert deployment.keys() <= USER_DEPLOYMENT_KEYS, deployment.keys() - USER_DEPLOYMENT_KEYS
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert launcher.keys() <= K8S_RUN_LAUNCHER_KEYS, launcher.keys() - K8S_RUN_LAUNCHER_KEYS
    assert launcher.get("runK8sConfig", {}).keys() <= RUN_K8S_CONFIG_KEYS
    assert values["dagsterDaemon"].keys() <= DAEMON_KEYS, values["dagsterDaemon"].keys() - DAEMON_KEYS
    assert values["postgresql"].keys() <= POSTGRESQL_KEYS, values["postgresql"].keys() - POSTGRESQL_KEYS


def test_helm_values_run_the_project_code_server_with_k8s_runs_daemon_and_postgres() -> None:
    values = helm_values()
    assert values["dagster-user-deployments"]["enabled"] is True
    deployment = code_server_deployment()
    # The chart runs `dagster code-server start -h 0.0.0.0 -p <port> <codeServerArgs>`.
    assert deployment["codeServerArgs"] == ["-m", "pipelines.definitions"]
    assert {"pipelines.definitions"} == workspace_modules(WORKSPACE)
    assert deployment["port"] == 4000
    # One image for everything: the code server (and so every run pod) runs the agent's image.
    agent_image = agent_container()["image"].rsplit(":", 1)[0]
    assert deployment["image"]["repository"] == agent_image
    assert deployment["podSecurityContext"]["runAsUser"] == NON_ROOT_UID

    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["runLauncher"]["config"]["k8sRunLauncher"]["securityContext"]["runAsNonRoot"] is True
    assert values["dagsterDaemon"]["enabled"] is True
    assert values["scheduler"]["type"] == "DagsterDaemonScheduler"

    postgres = values["postgresql"]
    assert postgres["enabled"] is False and postgres["postgresqlHost"]
    assert "postgresqlPassword" not in postgres, "the password belongs in the Secret, not in the values"
    assert values["generatePostgresqlPasswordSecret"] is False


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_is_multi_stage_and_runs_as_non_root() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    stages = [arguments for keyword, arguments in instructions if keyword == "FROM"]
    assert len(stages) >= 2
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users, "the image would run as root"
    final_user = users[-1].split(":")[0]
    assert final_user not in {"root", "0"}
    # A numeric uid lets the kubelet verify runAsNonRoot without a runAsUser.
    assert int(final_user) == NON_ROOT_UID
    # The Helm chart and the run launcher set `args`, which an ENTRYPOINT would turn into its arguments.
    assert not [keyword for keyword, _ in instructions if keyword == "ENTRYPOINT"]
    assert [keyword for keyword, _ in instructions if keyword == "CMD"]


def test_dockerignore_keeps_state_and_secrets_out_of_the_build_context() -> None:
    patterns = {line.strip() for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".rl_trading", "**/__pycache__", ".env"} <= patterns


@pytest.mark.parametrize("module", sorted(entrypoint_modules()))
def test_every_started_module_exists(module: str) -> None:
    if not module_exists(module):
        if module in PENDING_MODULES:
            pytest.skip(PENDING_MODULES[module])
        pytest.fail(f"{entrypoint_modules()[module]} starts {module}, which is not importable")


def test_entrypoints_cover_the_image_commands() -> None:
    modules = entrypoint_modules()
    assert {"resources.state_home", "pipelines.definitions", "pipelines.paper_trading"} <= modules.keys()


# ---------------------------------------------------------------- CI workflow


def test_ci_workflow_runs_make_test_against_postgres_and_builds_the_image() -> None:
    workflow = ci_workflow()
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    jobs = workflow["jobs"]

    test_job = jobs["test"]
    postgres = test_job["services"]["postgres"]
    assert postgres["image"] == "postgres:15"
    assert postgres["env"] == {"POSTGRES_HOST_AUTH_METHOD": "trust", "POSTGRES_DB": "test"}
    assert test_job["env"]["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    steps = workflow_steps(test_job)
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "make test" in runs and "make lint" in runs and "chromium" in runs
    (setup_python,) = [step for step in steps if step.get("uses", "").startswith("actions/setup-python@")]
    assert setup_python["with"]["python-version"] == "3.11" and setup_python["with"]["cache"] == "pip"
    uploads = [step for step in steps if step.get("uses", "").startswith("actions/upload-artifact@")]
    assert any(step["with"]["path"] == "coverage.xml" for step in uploads)
    assert "coverage.xml" in test_job["env"]["PYTEST_ADDOPTS"]

    build_steps = [
        step
        for job in jobs.values()
        for step in workflow_steps(job)
        if step.get("uses", "").startswith("docker/build-push-action@")
    ]
    assert build_steps and all(step["with"]["push"] is False for step in build_steps)


# ---------------------------------------------------------------- alert rules


def test_alert_rules_cover_drawdown_breaker_and_stale_data() -> None:
    names = rule_metric_names()
    assert {
        f"{METRIC_PREFIX}_drawdown",
        f"{METRIC_PREFIX}_breaker_state",
        f"{METRIC_PREFIX}_last_bar_timestamp_seconds",
    } <= names
    for rule_object in find_objects("PrometheusRule"):
        for group in rule_object["spec"]["groups"]:
            for rule in group["rules"]:
                assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
                assert rule["annotations"]["summary"], rule["alert"]


def test_alert_rules_read_metrics_the_live_metrics_module_exports() -> None:
    if not LIVE_METRICS.is_file():
        pytest.skip(f"{LIVE_METRICS.relative_to(PROJECT_ROOT)} is not in the repository yet")
    from prometheus_client import CollectorRegistry

    from trading_core.monitoring.live_metrics import LiveMetrics

    registry = CollectorRegistry()
    # The agent gives the metrics their `rl_trading_` prefix through the module's namespace argument.
    if "namespace" in inspect.signature(LiveMetrics).parameters:
        LiveMetrics(registry, namespace=METRIC_PREFIX)
    else:
        LiveMetrics(registry)
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    exported = set()
    for family in registry.collect():
        exported.add(family.name)
        exported.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    missing = rule_metric_names() - exported
    assert not missing, f"alert rules read metrics LiveMetrics does not export: {sorted(missing)}"


# ---------------------------------------------------------------- who may reach what: UI binding, network policies

UI_PORT = 3000
WEBSERVER_POD_LABELS = {"app.kubernetes.io/instance": "dagster", "component": "dagster-webserver"}
PRIVATE_RANGES = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"}
DNS_PORTS = {("UDP", 53), ("TCP", 53)}


def dockerfile_env() -> dict[str, str]:
    """The image's ENV settings (``KEY=value`` pairs, the form the Dockerfile uses)."""
    env: dict[str, str] = {}
    for keyword, arguments in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(arguments))
    return env


def rule_ports(rule: dict[str, Any]) -> set[tuple[str, int]]:
    """(protocol, port) pairs a NetworkPolicy rule opens; a rule without ports would open every port."""
    assert rule.get("ports"), f"a NetworkPolicy rule opens every port: {rule}"
    return {(port.get("protocol", "TCP"), port["port"]) for port in rule["ports"]}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return selector["matchLabels"].items() <= labels.items()


def test_dockerfile_default_command_serves_the_ui_on_loopback_only() -> None:
    (cmd,) = [
        arguments
        for keyword, arguments in dockerfile_instructions(DOCKERFILE.read_text())
        if keyword == "CMD"
    ]
    argv = dockerfile_command(cmd)
    assert argv[:2] == ["sh", "-c"]
    dev = shlex.split(argv[2].split("&&")[-1])
    assert dev[:3] == ["exec", "dagster", "dev"]
    host = flag_value(dev, "-h")
    assert host == "$RL_TRADING_UI_HOST" and int(flag_value(dev, "-p")) == UI_PORT
    assert dockerfile_env()["RL_TRADING_UI_HOST"] == "127.0.0.1"
    # The healthcheck polls the UI from inside the container, which loopback serves.
    assert dockerfile_env()["RL_TRADING_HEALTHCHECK_URL"].startswith(f"http://127.0.0.1:{UI_PORT}/")
    docs = (PROJECT_ROOT / "docs" / "deployment.md").read_text()
    assert "RL_TRADING_UI_HOST=0.0.0.0 -p 127.0.0.1:3000:3000" in docs and "### The Dagster UI" in docs


def test_agent_network_policy_admits_only_monitoring_and_opens_only_its_dependencies() -> None:
    policy = find_object("NetworkPolicy", "rl-trading-agent")["spec"]
    pod_labels = agent_deployment()["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["podSelector"], pod_labels)
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}

    (ingress,) = policy["ingress"]
    assert rule_ports(ingress) == {("TCP", MONITOR_PORT)}
    (peer,) = ingress["from"]
    assert peer == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}

    opened: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for rule in policy["egress"]:
        assert rule.get("to"), f"an egress rule reaches every destination: {rule}"
        for port in rule_ports(rule):
            opened.setdefault(port, []).extend(rule["to"])
    assert opened.keys() == DNS_PORTS | {("TCP", 443), ("TCP", 5432), ("TCP", 5000)}
    for port in DNS_PORTS:
        (dns,) = opened[port]
        assert dns["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
        assert dns["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
    (https,) = opened[("TCP", 443)]
    assert https["ipBlock"]["cidr"] == "0.0.0.0/0" and set(https["ipBlock"]["except"]) >= PRIVATE_RANGES
    # The databases and MLflow are reached as in-namespace pods, never as "anything on that port".
    for port in (("TCP", 5432), ("TCP", 5000)):
        assert all(
            set(peer) == {"podSelector"} and peer["podSelector"]["matchLabels"] for peer in opened[port]
        )


def test_dagster_webserver_is_reachable_only_through_the_login_proxy() -> None:
    values = helm_values()
    webserver = values["dagsterWebserver"]["service"]
    assert webserver.keys() <= {"type", "port", "annotations"}
    assert webserver["type"] == "ClusterIP" and values["ingress"]["enabled"] is False

    policy = find_object("NetworkPolicy", "dagster-webserver")["spec"]
    assert policy["podSelector"]["matchLabels"] == WEBSERVER_POD_LABELS
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = policy["ingress"]
    assert rule_ports(ingress) == {("TCP", webserver["port"])}
    (peer,) = ingress["from"]
    proxy = find_object("Deployment", "dagster-ui-auth-proxy")
    assert set(peer) == {"podSelector"} and selects(
        peer["podSelector"], proxy["spec"]["template"]["metadata"]["labels"]
    )
    egress = set().union(*(rule_ports(rule) for rule in policy["egress"]))
    assert egress == DNS_PORTS | {("TCP", 5432), ("TCP", code_server_deployment()["port"])}

    # The proxy forwards to the webserver's Service port and takes its OAuth client from the Secret only.
    settings = find_object("ConfigMap", "dagster-ui-auth-proxy")["data"]
    assert settings["OAUTH2_PROXY_UPSTREAMS"].endswith(f":{webserver['port']}")
    (container,) = proxy["spec"]["template"]["spec"]["containers"]
    from_secret = {entry["name"] for entry in container["env"] if "secretKeyRef" in entry["valueFrom"]}
    assert {"OAUTH2_PROXY_CLIENT_SECRET", "OAUTH2_PROXY_COOKIE_SECRET"} <= from_secret
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = find_object("Service", "dagster-ui-auth-proxy")
    assert service["spec"]["type"] == "ClusterIP" and selects(
        {"matchLabels": service["spec"]["selector"]}, proxy["spec"]["template"]["metadata"]["labels"]
    )

    # `kubectl apply -k` applies the policies, not the proxy (it cannot start with placeholders).
    (kustomization,) = load_documents(K8S_DIR / "kustomization.yaml")
    assert "networkpolicy.yaml" in kustomization["resources"]
    assert "dagster-ui-auth-proxy.yaml" not in kustomization["resources"]
    assert PLACEHOLDER.search(settings["OAUTH2_PROXY_OIDC_ISSUER_URL"])


def test_helm_daemon_queues_one_retraining_run_at_a_time() -> None:
    from resources.state_home import RETRAINING_TAG_KEY, RETRAINING_TAGS

    queued = helm_values()["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queued["tagConcurrencyLimits"] == [
        {"key": RETRAINING_TAG_KEY, "value": RETRAINING_TAGS[RETRAINING_TAG_KEY], "limit": 1}
    ]
