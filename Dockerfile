# Multi-stage, non-root image of the pipeline: `dagster dev` by default, `python -m pipelines.run_pipeline` to run once.
# Build: docker build -t rl-trading .      Run: docker run -p 3000:3000 -v rl_state:/home/app/state rl-trading
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends build-essential git && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements.lock pyproject.toml ./
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade pip wheel setuptools \
    # the CPU build of torch keeps the image free of CUDA libraries
    && /opt/venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && /opt/venv/bin/pip install -r requirements.lock
COPY trading_core ./trading_core
COPY trading_assets ./trading_assets
COPY resources ./resources
COPY pipelines ./pipelines
COPY benchmarks ./benchmarks
COPY README.md workspace.yaml ./
RUN /opt/venv/bin/pip install --no-deps .

FROM python:3.11-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 app
COPY --from=build /opt/venv /opt/venv
WORKDIR /home/app/project
COPY --chown=app:app workspace.yaml pyproject.toml ./
USER app
ENV PATH=/opt/venv/bin:$PATH \
    RL_TRADING_HOME=/home/app/state \
    DAGSTER_HOME=/home/app/state/dagster \
    GX_ANALYTICS_ENABLED=false \
    PYTHONUNBUFFERED=1
VOLUME ["/home/app/state"]
EXPOSE 3000 5000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/server_info')" || exit 1
CMD ["sh", "-c", "python -c 'from resources.state_home import StateHome; StateHome.from_env().prepare()' && dagster dev -h 0.0.0.0 -p 3000 -w workspace.yaml"]
