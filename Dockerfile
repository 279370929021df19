# syntax=docker/dockerfile:1
# sensorcast images. Default target `service`: the runtime without torch (onnxruntime,
# FastAPI, paho, influxdb-client), from PyPI wheels alone, for linux/amd64 and linux/arm64:
#   docker buildx build --platform linux/amd64,linux/arm64 -t sensorcast:0.1.0 .
# Target `train`: the same plus torch (CPU) for `sensorcast train` as a one-off job:
#   docker build --target train -t sensorcast-train:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- deps: a venv with the service's dependencies --------------------------------------
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (this layer changes only with pyproject.toml), wheels only: no
# compiler in the image, and a missing wheel for a platform fails the build loudly.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install --only-binary=:all: -r /tmp/requirements.txt

# ---- build: + the package -------------------------------------------------------------
FROM deps AS build
COPY README.md ./
COPY service ./service
# tools: simulator, demo, benchmarks (`sensorcast demo|simulate|bench`); evaluation: NAB.
# Neither needs torch; training is there for the `train` target.
COPY tools ./tools
COPY evaluation ./evaluation
COPY training ./training
RUN pip install --no-deps . \
 && python -c "import service.api.app, service.serve, onnxruntime" \
 && ! python -c "import torch" 2>/dev/null

# ---- train: + torch (CPU wheels) for the trainer ---------------------------------------
# From deps, not build: the torch layer then changes only with pyproject.toml or the torch
# source, not with every change to the code (a rebuild took 100 s for a code change).
FROM deps AS train-build
# Where torch comes from (TORCH_SOURCE):
# - index (default): "torch>=2.4,<2.14" from TORCH_INDEX_URL. PyPI's x86_64 torch wheels
#   pull multi-GB CUDA libraries; the CPU index has CPU-only wheels for amd64 and arm64.
#   Set TORCH_INDEX_URL=https://pypi.org/simple to use PyPI.
# - wheels: the torch wheel in TORCH_WHEEL_DIR, a directory inside the build context
#   (default deploy/wheels, whose *.whl are git-ignored), e.g. a local CPU wheel on a
#   machine that cannot reach the CPU index; torch's own dependencies still come from PyPI:
#   cp torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl deploy/wheels/
#   docker build --target train --build-arg TORCH_SOURCE=wheels -t sensorcast-train:0.1.0 .
ARG TORCH_SOURCE=index
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_WHEEL_DIR=deploy/wheels
COPY ${TORCH_WHEEL_DIR} /tmp/torch-wheels
# hadolint ignore=DL3013
RUN case "${TORCH_SOURCE}" in \
      index) pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.4,<2.14" ;; \
      wheels) set -- /tmp/torch-wheels/torch-*.whl \
        && if [ ! -f "$1" ]; then echo "TORCH_SOURCE=wheels: no torch-*.whl in ${TORCH_WHEEL_DIR}" >&2; exit 1; fi \
        && pip install "$@" "torch>=2.4,<2.14" ;; \
      *) echo "TORCH_SOURCE must be index or wheels, not ${TORCH_SOURCE}" >&2; exit 1 ;; \
    esac \
 && rm -rf /tmp/torch-wheels \
 && pip install --only-binary=:all: "onnx>=1.16,<2" "onnxscript>=0.1" "matplotlib>=3.8,<4" "tqdm>=4.66,<5" "pyyaml>=6,<7"
COPY --from=build /src /src
RUN pip install --no-deps /src \
 && python -c "import torch, training.command, service.serve"

FROM ${PYTHON_IMAGE} AS train
# reports/ and models/ exist and belong to the user, so volumes mounted there start writable.
RUN useradd --system --uid 10001 --user-group --home-dir /work --create-home --shell /usr/sbin/nologin sensorcast \
 && mkdir -p /work/reports /work/models && chown -R sensorcast:sensorcast /work
COPY --from=train-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /work
# Numeric, so orchestrators can verify it is not root (runAsNonRoot).
USER 10001:10001
ENTRYPOINT ["sensorcast"]
CMD ["train", "--help"]

# ---- service-venv: the build's venv less what only installing needs -------------------
FROM build AS service-venv
# pip and setuptools (25 MB) only install, and the dependencies' own test suites (17 MB,
# numpy's mostly) never run here: 42 MB of the image (README, "Image facts"). The import
# check runs again on what is left.
RUN python -m pip uninstall -y -q pip setuptools \
 && find /opt/venv/lib -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} + \
 && python -c "import service.api.app, service.serve, service.cli, onnxruntime, numpy"

# ---- service (default): the runtime, non-root ------------------------------------------
FROM ${PYTHON_IMAGE} AS service
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home --shell /usr/sbin/nologin sensorcast \
 && mkdir -p /data/spool /data/state /data/outbox /models \
 && chown -R sensorcast:sensorcast /data
COPY --from=service-venv /opt/venv /opt/venv
# The shipped demo model, so the image starts with a real model; compose mounts ./models.
COPY models /models
# The API binds every address: serve then refuses to start without an API key file
# (SENSORCAST_API__API_KEY_FILE / READ_KEY_FILE; compose mounts both) unless
# SENSORCAST_API__ALLOW_OPEN=true is set on purpose.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SENSORCAST_API__HOST=0.0.0.0 \
    SENSORCAST_API__PORT=8080 \
    SENSORCAST_STORE__URL=sqlite:////data/sensorcast.db \
    SENSORCAST_STORE__SPOOL_DIR=/data/spool \
    SENSORCAST_STREAMS__CHECKPOINT_DIR=/data/state \
    SENSORCAST_ALERTS__OUTBOX_DIR=/data/outbox \
    SENSORCAST_MODELS__DIR=/models
WORKDIR /data
VOLUME ["/data"]
# Numeric, so orchestrators can verify it is not root (runAsNonRoot).
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]
CMD ["sensorcast", "serve"]
