# The offline worker on CPU: takes job shards from Redis, embeds (sentence-transformers with the
# packaged all-MiniLM-L6-v2), calls the model services, trains; any number of replicas.
#
#   docker build -f docker/worker.Dockerfile -t rationalyst/worker:0.1.0 .
#
# Build from the repository root (the context .dockerignore lets through only what is copied).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

COPY --from=uv /uv /usr/local/bin/uv
ENV UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN uv venv /opt/venv --python /usr/local/bin/python3

# torch alone first, the CPU build from PyTorch's CPU index (see model-server.Dockerfile).
ARG TORCH_SPEC="torch==2.13.0+cpu"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY docker/constraints/cpu.txt /tmp/constraints.txt
RUN uv pip install --constraint /tmp/constraints.txt \
        --extra-index-url "$TORCH_INDEX" --index-strategy unsafe-best-match "$TORCH_SPEC"

# The `model`, `worker` (queue, embeddings), `train` (TRL, peft) and `eval` (charts) extras; pip
# so that `rationalyst models pull` works in the container.
COPY pyproject.toml README.md /src/
RUN uv pip install --constraint /tmp/constraints.txt -r /src/pyproject.toml \
        --extra model --extra worker --extra train --extra eval pip
COPY shared /src/shared
COPY gateway /src/gateway
COPY services /src/services
RUN uv pip install --constraint /tmp/constraints.txt --build-constraint /tmp/constraints.txt \
        --no-deps /src

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

# Same fixed uid/gid as every rationalyst image (Kubernetes runAsUser/fsGroup use them).
RUN groupadd --system --gid 10001 rationalyst \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/rationalyst \
        --shell /usr/sbin/nologin rationalyst \
    && mkdir -p /models /artifacts \
    && chown 10001:10001 /models /artifacts

COPY --from=builder /opt/venv /opt/venv
COPY docker/healthcheck.py /opt/rationalyst/healthcheck.py

# The models cache is the models volume here (`rationalyst models pull` writes to it; base
# models for training are read from it); hub downloads land there too.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RATIONALYST_MODELS_DIR=/models \
    HF_HOME=/models/huggingface \
    WORKER_ARTIFACTS_DIR=/artifacts

USER 10001:10001
WORKDIR /home/rationalyst

# No HTTP here: healthy = the worker process is alive and the Redis it uses answers PING.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "/opt/rationalyst/healthcheck.py", "worker", "--redis"]

ENTRYPOINT ["python", "-m", "services.worker"]
