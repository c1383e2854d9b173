# The offline worker on NVIDIA GPUs: the CUDA build of torch for training (and GPU embeddings
# with WORKER_EMBEDDING_DEVICE=cuda). No vLLM: the worker calls the model services over HTTP.
#
#   docker build -f docker/worker-gpu.Dockerfile -t rationalyst/worker-gpu:0.1.0 .
#
# Needs the NVIDIA Container Toolkit on the host and a driver for CUDA 13.0 (R580 or newer).
# Build from the repository root (the context .dockerignore lets through only what is copied).

# The base flavour is enough: torch's wheels bring their own CUDA libraries; the image adds the
# driver-facing bits and the CUDA version the torch build in docker/constraints/gpu.txt needs.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS os

# Ubuntu 24.04's Python 3.12; its headers and g++ because Triton builds small extensions at run
# time (torch.compile, fused kernels). Apt lists removed in the same layer.
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-dev g++ \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------
FROM os AS builder

COPY --from=uv /uv /usr/local/bin/uv
ENV UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN uv venv /opt/venv --python /usr/bin/python3.12

# torch (CUDA build, from PyPI) alone first: the largest layer, the one that changes least.
COPY docker/constraints/gpu.txt /tmp/constraints.txt
RUN uv pip install --constraint /tmp/constraints.txt "torch==2.13.0"
COPY pyproject.toml README.md /src/
RUN uv pip install --constraint /tmp/constraints.txt -r /src/pyproject.toml \
        --extra model --extra worker --extra train --extra eval pip
COPY shared /src/shared
COPY gateway /src/gateway
COPY services /src/services
RUN uv pip install --constraint /tmp/constraints.txt --build-constraint /tmp/constraints.txt \
        --no-deps /src

# ---------------------------------------------------------------------------------------------
FROM os

# Same fixed uid/gid as every rationalyst image (Kubernetes runAsUser/fsGroup use them).
RUN groupadd --system --gid 10001 rationalyst \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/rationalyst \
        --shell /usr/sbin/nologin rationalyst \
    && mkdir -p /models /artifacts \
    && chown 10001:10001 /models /artifacts

COPY --from=builder /opt/venv /opt/venv
COPY docker/healthcheck.py /opt/rationalyst/healthcheck.py

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
