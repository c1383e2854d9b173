# The model service on NVIDIA GPUs: the vLLM engine (the `vllm` package from PyPI, with the CUDA
# build of torch it pins). One image for the three roles; MODEL_SERVER_ROLE picks one and
# MODEL_SERVER_MODEL names the checkpoint (a folder on the models volume or a hub id).
#
#   docker build -f docker/model-server-gpu.Dockerfile -t rationalyst/model-server-gpu:0.1.0 .
#
# Needs the NVIDIA Container Toolkit on the host and a driver for CUDA 13.0 (R580 or newer).
# Build from the repository root (the context .dockerignore lets through only what is copied).

# The devel flavour, as vLLM's own image uses: FlashInfer compiles some kernels just in time
# with nvcc and g++ on first use. The CUDA version matches the torch build vllm 0.32.0 pins.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-devel-ubuntu24.04

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS os

# Ubuntu 24.04's Python 3.12; its headers and g++ because Triton and FlashInfer build small
# extensions at run time. Apt lists removed in the same layer.
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

# vLLM first (with torch and the CUDA libraries, by far the largest layer), then the `model`
# extra's remaining dependencies, then the project itself without dependencies.
COPY docker/constraints/gpu.txt /tmp/constraints.txt
RUN uv pip install --constraint /tmp/constraints.txt "vllm==0.32.0"
COPY pyproject.toml README.md /src/
RUN uv pip install --constraint /tmp/constraints.txt -r /src/pyproject.toml --extra model pip
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

# Model folders and hub downloads live on the models volume (Llama-3-8B is 16 GB: download it
# once). vLLM's usage reporting off: deployments here are often offline.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RATIONALYST_MODELS_DIR=/models \
    HF_HOME=/models/huggingface \
    VLLM_NO_USAGE_STATS=1 \
    MODEL_SERVER_HOST=0.0.0.0 \
    MODEL_SERVER_PORT=8000 \
    MODEL_SERVER_ENGINE=vllm

USER 10001:10001
WORKDIR /home/rationalyst
EXPOSE 8000

# /health answers while the model loads (minutes for an 8B model); /ready says when it is
# loaded. The script expands ${MODEL_SERVER_PORT} itself, so the port follows the setting.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "/opt/rationalyst/healthcheck.py", "http", "http://127.0.0.1:${MODEL_SERVER_PORT}/health"]

ENTRYPOINT ["python", "-m", "services.model_server"]
