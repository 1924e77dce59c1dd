# MetaMCP gateway image: gunicorn on a slim Python, running as an unprivileged user.
# It expects DATABASE_URL, JWT_SECRET and ENCRYPTION_KEY from the environment (see
# docker-compose.yml); without DATABASE_URL it would start an embedded PostgreSQL in /data.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    METAMCP_HOST=0.0.0.0 \
    METAMCP_PORT=12009 \
    METAMCP_DATA_DIR=/data

WORKDIR /src
COPY setup.cfg pyproject.toml README.md wsgi.py ./
COPY metamcp ./metamcp
COPY migrations ./migrations
# A regular install: the package, wsgi.py and the migrations (under share/metamcp) land in
# site-packages and the prefix; the sources are not kept.
RUN pip install . && rm -rf /src

WORKDIR /app
COPY scripts ./scripts

RUN useradd --system --uid 10001 --home-dir /app metamcp \
    && mkdir -p /data && chown metamcp /data
USER metamcp
VOLUME ["/data"]
EXPOSE 12009

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:12009/health', timeout=4).status != 200)"

CMD ["gunicorn", "-c", "python:metamcp.gunicorn_conf"]
