# syntax=docker/dockerfile:1
# The pooling service. CPU image by default:
#   docker build -t pooling-service .
# CUDA image (torch's CUDA wheels carry the CUDA runtime; the host needs the
# NVIDIA driver and container toolkit, then run with --gpus all):
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t pooling-service:cuda .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
# The torch index comes first in preference: its +cpu (or +cuXXX) build of the
# pinned version outranks the generic wheel.
RUN /opt/venv/bin/pip install --extra-index-url "${TORCH_INDEX}" .

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    POOL_DEVICE=auto \
    POOL_HOST=0.0.0.0 \
    POOL_PORT=8000
COPY --from=build /opt/venv /opt/venv
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pool
USER 10001
WORKDIR /srv
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
# uvicorn serving app.main:app with uvloop and httptools; POOL_WORKERS sets its processes.
CMD ["python", "-m", "app"]
