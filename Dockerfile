# ferryman's image: `docker compose up` builds it (docker-compose.yml); alone:
#   docker build -t ferryman . && docker run -v ./config/ferryman-compose.toml:/etc/ferryman/ferryman.toml:ro ferryman
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what `pip install .` needs (.dockerignore keeps .venv, tests, certs, ... out of the context). ferryman/'s
# actors, config, protocols, bridge are relative symlinks (COPY keeps them) to the folders copied beside it.
COPY pyproject.toml README.md ./
COPY ferryman ferryman
COPY config config
COPY actors actors
COPY protocols protocols
COPY bridge bridge
COPY ferryman_devtools ferryman_devtools
RUN pip install . && rm -rf /src

# Non-root; /var/lib/ferryman holds the bridge store (a volume in docker-compose.yml).
RUN useradd --system --uid 10001 --home-dir /var/lib/ferryman --shell /usr/sbin/nologin ferryman \
    && mkdir -p /var/lib/ferryman /etc/ferryman \
    && chown ferryman:ferryman /var/lib/ferryman
USER ferryman
WORKDIR /var/lib/ferryman

# 1884: the MQTT listener, 9100: /metrics and /health (addresses in the mounted settings file).
EXPOSE 1884 9100

# No curl in slim: python's urllib; a 503 from /health raises, so the check fails.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/health', timeout=4)"]

ENTRYPOINT ["ferryman"]
CMD ["run", "--config", "/etc/ferryman/ferryman.toml"]
