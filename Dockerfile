# One image for every process of the Procfile: web, worker, beat and the migration.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first, at the exact versions of constraints.txt, so a code change
# does not reinstall them.
COPY constraints.txt setup.cfg pyproject.toml README.md ./
COPY ingestor ./ingestor
RUN pip install --constraint constraints.txt . \
    && useradd --create-home --uid 10001 ingestor
COPY alembic.ini ./
COPY migrations ./migrations

# Never root. Writes go to /tmp only (beat's schedule, the metrics directories).
USER ingestor
ENV PORT=5000 APP_ENV=production
EXPOSE 5000 9191
# The Procfile's web line; compose (or the platform) picks the command per process.
CMD ["gunicorn", "--config", "python:ingestor.observability.gunicorn_config", "ingestor:create_app()"]
