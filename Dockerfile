FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 10001 notifier
WORKDIR /app
COPY pyproject.toml README.md worker.py celeryconfig.py ./
COPY notifier ./notifier
RUN pip install --no-cache-dir .
USER notifier
# A worker is healthy when Redis answers and it can reach its SMTP server.
CMD ["celery", "-A", "worker", "worker", "--loglevel", "INFO"]
