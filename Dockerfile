# One multi-stage, non-root (uid 10001) image for every process of the project. It has no ENTRYPOINT, so
# Kubernetes `command`/`args`, `docker run IMAGE ...` and Dagster's run launcher can start any of these:
#
#   (default) Dagster UI + daemon:  dagster dev -h $RL_TRADING_UI_HOST -p 3000 -w workspace.yaml   (state in /home/app/state)
#                                   The UI has no login and can launch runs, so it listens on 127.0.0.1 inside the
#                                   container unless RL_TRADING_UI_HOST says otherwise (docs/deployment.md, "The Dagster UI").
#   one pipeline run:               python -m pipelines.run_pipeline --timesteps 50000 --seed 7
#   Dagster code server:            dagster code-server start -m pipelines.definitions -h 0.0.0.0 -p 4000
#                                   (the Helm chart's user deployment; its run pods run `dagster api ...` here)
#   paper-trading agent:            python -m pipelines.paper_trading --broker alpaca --monitor-host 0.0.0.0 --monitor-port 9108
#   registry rollback:              python -m pipelines.rollback
#
# Build: docker build --build-arg VCS_REF=$(git rev-parse HEAD) -t rl-trading .
# Run:   docker run -e RL_TRADING_UI_HOST=0.0.0.0 -p 127.0.0.1:3000:3000 -v rl_state:/home/app/state rl-trading
#        (the UI on this machine's loopback only; never publish it on a public interface without a login proxy)
# The healthcheck polls RL_TRADING_HEALTHCHECK_URL (the UI by default); see docs/deployment.md for the others.

FROM python:3.11-slim-bookworm AS build
# The Dagster Kubernetes library matching dagster 1.13.27: the Helm chart's K8sRunLauncher is named in the
# instance config that every run pod loads, so the image that runs the code must be able to import it.
ARG DAGSTER_K8S_VERSION=0.29.27
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends build-essential git && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements.lock ./
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade pip wheel setuptools \
    # the CPU build of torch keeps the image free of CUDA libraries
    && /opt/venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && /opt/venv/bin/pip install -r requirements.lock \
    && /opt/venv/bin/pip install "dagster-k8s==${DAGSTER_K8S_VERSION}"

FROM python:3.11-slim-bookworm AS runtime
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="rl-trading" \
      org.opencontainers.image.description="Dagster RL trading pipeline, code server and paper-trading agent" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${VCS_REF}"
# git: MLflow and the provenance helper ask it for the commit (the image has no .git, so they record "unknown").
# /opt/dagster/dagster_home: the Helm chart's DAGSTER_HOME, where run pods get the instance config mounted.
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 app \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin app \
    && mkdir -p /home/app/state /opt/dagster/dagster_home \
    && chown app:app /home/app/state /opt/dagster/dagster_home
COPY --from=build /opt/venv /opt/venv
WORKDIR /home/app/project
# The code runs from this source tree on PYTHONPATH rather than from a built wheel: package data such as
# trading_core/monitoring/dashboard.html stays next to its module (pyproject.toml declares no package-data).
# Root owns the code; the app user can read it, not change it, which also suits a read-only root filesystem.
COPY trading_core ./trading_core
COPY trading_assets ./trading_assets
COPY resources ./resources
COPY pipelines ./pipelines
COPY benchmarks ./benchmarks
COPY workspace.yaml pyproject.toml README.md ./
RUN /opt/venv/bin/python -m compileall -q /home/app/project
USER 10001:10001
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/home/app/project \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RL_TRADING_HOME=/home/app/state \
    DAGSTER_HOME=/home/app/state/dagster \
    GX_ANALYTICS_ENABLED=false \
    MPLCONFIGDIR=/tmp/matplotlib \
    RL_TRADING_HEALTHCHECK_URL=http://127.0.0.1:3000/server_info \
    RL_TRADING_UI_HOST=127.0.0.1
VOLUME ["/home/app/state"]
# 3000 Dagster UI, 4000 Dagster code server (gRPC), 9108 paper-trading monitor (/metrics, /healthz, /readyz)
EXPOSE 3000 4000 9108
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['RL_TRADING_HEALTHCHECK_URL'], timeout=4)"]
CMD ["sh", "-c", "python -c 'from resources.state_home import StateHome; StateHome.from_env().prepare()' && exec dagster dev -h \"$RL_TRADING_UI_HOST\" -p 3000 -w workspace.yaml"]
