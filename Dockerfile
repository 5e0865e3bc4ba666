# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target api    -t moe-lab-api .     # FastAPI + migrations, no torch
#   docker build --target worker -t moe-lab-worker .  # Celery worker with torch and the engine

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MOE_HOME=/var/lib/moe-lab
WORKDIR /app
# Named volumes mounted here take the ownership these folders have in the image.
RUN useradd --create-home --uid 1000 moe \
    && mkdir -p /var/lib/moe-lab/artifacts /var/lib/moe-lab/cache /var/lock/moe-gpus \
    && chown -R moe /var/lib/moe-lab /var/lock/moe-gpus

# ---------------------------------------------------------------- api: no torch
FROM base AS api
# The lock (./run lock): every package pinned and hashed, so an image built later is the same.
COPY requirements/api.lock requirements/api.lock
RUN pip install --require-hashes -r requirements/api.lock
COPY alembic.ini ./
COPY migrations migrations
# The store of record and the queue; the API enqueues by task name, so no worker code.
COPY store store
COPY api api
# Only the engine's torch-free modules: the config it validates, the success criteria and
# the sizes a dry run reports, the records it serves.
COPY moe_core/__init__.py moe_core/comparable.py moe_core/config.py moe_core/presets.py moe_core/criteria.py moe_core/sizing.py moe_core/records.py moe_core/statistics.py moe_core/search.py moe_core/proposals.py moe_core/measures.py moe_core/verdict_records.py moe_core/verdict_words.py moe_core/
USER moe
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# Two processes; api.serve is uvicorn's CLI with its socket fixed for --workers (see it).
CMD ["python", "-m", "api.serve", "api.main:app", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]

# ---------------------------------------------------------------- worker: torch + engine
FROM base AS worker
# The NVIDIA runtime mounts only what these name (unset: utility alone, i.e. nvidia-smi but
# no libcuda, so torch would see no GPU); NVIDIA's CUDA images set the same.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY requirements/worker.lock requirements/worker.lock
# worker.lock holds PyPI's torch, on x86_64 Linux the CUDA build, and its nvidia-* packages.
RUN pip install --require-hashes -r requirements/worker.lock
# Migrations too: a worker on the embedded SQLite store upgrades it at start.
COPY alembic.ini ./
COPY migrations migrations
COPY store store
COPY worker worker
COPY moe_core moe_core
USER moe
# One worker per GPU, training MOE_RUNS_PER_GPU runs at once (its pool's size, default 1),
# and never prefetching another hours-long run. On SIGTERM every run is handed back within
# seconds (worker/shutdown.py): well inside a 60 s grace.
CMD ["celery", "-A", "worker.celery_app", "worker", "-Q", "gpu", "--prefetch-multiplier", "1", "--loglevel", "INFO"]
