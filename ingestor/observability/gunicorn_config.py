"""gunicorn's configuration for the `web` process: `gunicorn -c python:ingestor.observability.gunicorn_config`.

- Binds `0.0.0.0:$PORT` (default 5000) with `$WEB_CONCURRENCY` workers (default 2),
  the PaaS conventions. `GUNICORN_CMD_ARGS="--bind 127.0.0.1:8000"` overrides either.
- gunicorn's own lines (boot, worker exits) in the ingestor's log format. No access
  log: the app logs each request itself, with its route and duration
  (`ingestor.observability.init_app`), in the same format.
- Metrics: the master gives its workers a fresh PROMETHEUS_MULTIPROC_DIR before it
  forks them, so `GET /metrics` sums every worker (see `metrics.py`).

Read by the gunicorn master only; it imports nothing that imports prometheus-client.
"""

from __future__ import annotations

import os

from ingestor.observability.metrics import prepare_multiprocess_dir
from ingestor.settings import Settings

_settings = Settings.from_env()  # fails the start on a bad variable, like the app would

bind = [f"0.0.0.0:{os.environ.get('PORT') or 5000}"]
workers = int(os.environ.get("WEB_CONCURRENCY") or 2)
accesslog = None
# gunicorn's runtime-management socket lives at one path per user ($HOME/.gunicorn):
# two web processes on a machine would fight over it, and nothing here uses it.
control_socket_disable = True
loglevel = _settings.log_level.lower()
# Leave the root logger to the app (each worker configures it in create_app); send
# gunicorn's error log through the ingestor's formatter, and only there.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": _settings.log_level, "handlers": []},
    "loggers": {
        "gunicorn.error": {"level": _settings.log_level, "handlers": ["ingestor"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
    },
    "handlers": {
        "ingestor": {
            "class": "logging.StreamHandler",
            "formatter": "ingestor",
            "filters": ["redact"],
            "stream": "ext://sys.stderr",
        },
    },
    "filters": {"redact": {"()": "ingestor.observability.logs.RedactingFilter"}},
    "formatters": {
        "ingestor": {"()": "ingestor.observability.logs.build_formatter", "log_format": _settings.log_format}
    },
}


def on_starting(server: object) -> None:
    """In the master, before the first fork: the workers' metrics directory."""
    prepare_multiprocess_dir("web")
