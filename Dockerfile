# One image for every process of the Procfile: web, worker, beat and the migration.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY constraints.txt setup.cfg pyproject.toml README.md ./
COPY ingestor ./ingestor
RUN pip install --constraint constraints.txt . \
    && useradd --create-home --uid 10001 ingestor
COPY alembic.ini ./
COPY migrations ./migrations

USER ingestor
EXPOSE 5000
CMD ["gunicorn", "--bind", "0.0.0.0:5000", "--workers", "2", "ingestor:create_app()"]
