# The cutover service image: `cutover serve` and every other `cutover` command.
# Build: docker compose build (see docker-compose.yml); data lives in the /data volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY metrics ./metrics
COPY proxy ./proxy
COPY shadow ./shadow
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data cutover \
    && mkdir -p /data && chown cutover /data

USER cutover
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
# liveness only (/healthz touches no store): /readyz answers 503 while the primary is down,
# which a restart cannot fix; a load balancer's readiness probe reads /readyz
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
CMD ["cutover", "serve", "--host", "0.0.0.0", "--port", "8000"]
