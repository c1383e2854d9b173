# The gateway: the public reasoning API in front of the model services. Base dependencies and the
# job API's arq and redis: no torch, no transformers (they are not even in its constraints file).
#
#   docker build -f docker/gateway.Dockerfile -t rationalyst/gateway:0.1.0 .
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

# Dependencies first (they change less often than the code), then the project without them. arq
# and redis are the only parts of the `worker` extra the job API (Redis queue) needs.
COPY docker/constraints/gateway.txt /tmp/constraints.txt
COPY pyproject.toml README.md /src/
RUN uv pip install --constraint /tmp/constraints.txt -r /src/pyproject.toml arq redis
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
    && mkdir -p /artifacts \
    && chown 10001:10001 /artifacts

COPY --from=builder /opt/venv /opt/venv
COPY docker/healthcheck.py /opt/rationalyst/healthcheck.py

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8100

USER 10001:10001
WORKDIR /home/rationalyst
EXPOSE 8100

# /health: the process answers (cheap, no upstream calls); /ready also checks the model
# services. The script expands ${GATEWAY_PORT} itself, so the port follows the setting.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/opt/rationalyst/healthcheck.py", "http", "http://127.0.0.1:${GATEWAY_PORT}/health"]

ENTRYPOINT ["python", "-m", "gateway"]
