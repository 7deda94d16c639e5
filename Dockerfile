# oilspill: one process (API, SQLite job store, worker pool, cleanup). Point ML_SERVICE_URL at
# your ML service; without it the bundled ML stub runs inside the container.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OILSPILL_HOST=0.0.0.0 \
    OILSPILL_PORT=8000 \
    OILSPILL_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY oilspill ./oilspill
COPY ml_stub ./ml_stub
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 --home-dir /data oilspill \
 && mkdir -p /data && chown oilspill /data

USER oilspill
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('OILSPILL_PORT', '8000'), timeout=4)"]
CMD ["oilspill", "serve"]
