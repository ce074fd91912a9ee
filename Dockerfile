# The pooling service. CPU image by default:
#   docker build -t pooling-service .
# CUDA image (torch's CUDA wheels carry the CUDA runtime; the host needs the
# NVIDIA driver and container toolkit, then run with --gpus all):
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 \
#                --build-arg TORCH_DEVICE=cuda -t pooling-service:cuda .
#
# Pick a CUDA index that has the torch pyproject.toml pins and that the host's driver supports.
# (Not built or run by the project's tests, which have no GPU.)
#
# Build arguments:
#   PYTHON_IMAGE  base image with python (3.11+), its venv module and CA certificates
#   TORCH_INDEX   the package index torch is taken from, and only torch
#   TORCH_DEVICE  cpu or cuda: the build fails unless the installed torch is that build

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# The dependencies pyproject.toml names, as two requirement files: torch's pin, and the rest.
# Later steps copy these files, so an edit to pyproject.toml that leaves them alone rebuilds nothing.
FROM ${PYTHON_IMAGE} AS requirements
COPY pyproject.toml /
RUN python -c 'import re, tomllib; deps = [d.replace(" ", "") for d in tomllib.load(open("/pyproject.toml", "rb"))["project"]["dependencies"]]; \
open("/torch.txt", "w").write("".join(d + "\n" for d in deps if re.match("torch==", d))); \
open("/requirements.txt", "w").write("".join(d + "\n" for d in deps if not re.match("torch==", d)))'

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
# torch first, on its own and from TORCH_INDEX alone: with any other index in reach, pip takes
# PyPI's default build (CUDA, several GB) when TORCH_INDEX cannot be reached. Its local version
# (+cpu, +cu126, +rocm6.4; none is PyPI's CUDA build) is checked at once, before anything else is
# installed, and the build itself once torch can be imported. (Each build argument
# is declared just before the step that uses it: it is part of the cache key of every step after.)
COPY --from=requirements /torch.txt /tmp/
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_DEVICE=cpu
RUN /opt/venv/bin/pip install --retries 2 --timeout 30 --no-deps --index-url "${TORCH_INDEX}" -r /tmp/torch.txt \
 && /opt/venv/bin/python -c "import sys; from importlib.metadata import version; v = version('torch'); \
local = v.partition('+')[2]; built = 'cpu' if local == 'cpu' else 'rocm' if local.startswith('rocm') else 'cuda'; \
sys.exit(0 if built == '${TORCH_DEVICE}' else f'torch {v} is a {built} build; TORCH_DEVICE asks for ${TORCH_DEVICE}')"
# Then the service's other dependencies, from PyPI.
COPY --from=requirements /requirements.txt /tmp/
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt \
 && /opt/venv/bin/python -c "import sys, torch; built = 'cuda' if torch.version.cuda else 'rocm' if torch.version.hip else 'cpu'; \
print(f'torch {torch.__version__} ({built} build)'); \
sys.exit(0 if built == '${TORCH_DEVICE}' else f'torch {torch.__version__} is a {built} build; TORCH_DEVICE asks for ${TORCH_DEVICE}')"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    POOL_DEVICE=auto \
    POOL_HOST=0.0.0.0 \
    POOL_PORT=8000 \
    POOL_GRPC_PORT=8001
RUN groupadd --system --gid 10001 pool \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin pool
# The dependencies, then the service's code beside them in a small layer of its own: a change
# to the code rebuilds only that. `python -m app` finds it in the working directory.
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
COPY app ./app
RUN python -m compileall -q app
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
# uvicorn serving app.main:app with uvloop and httptools; POOL_WORKERS sets its processes.
CMD ["python", "-m", "app"]
