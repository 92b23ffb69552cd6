"""The HTTP API under gunicorn for the bench, and a real user logged in to it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.client import HTTPConnection
from pathlib import Path

from sqlalchemy import text

from ingestor.auth.models import User
from ingestor.database import Database
from ingestor.settings import Settings
from tests.support.services import settings_env

ROOT = Path(__file__).resolve().parent.parent
USERNAME = "bench"
PASSWORD = "bench-password-long-enough"


def create_bench_user(database: Database) -> None:
    """The only user of the bench's database: the one `login` logs in as."""
    with database.session() as session, session.begin():
        session.execute(text("DELETE FROM api_user"))
        user = User(username=USERNAME)
        user.set_password(PASSWORD)
        session.add(user)


@contextmanager
def gunicorn_api(settings: Settings) -> Iterator[tuple[int, str]]:
    """gunicorn (one worker per core) serving `settings`' app: (port, bearer token) once it answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, **settings_env(settings)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(os.cpu_count() or 2),
            # The platform's month of usage takes seconds on hourly rows: not a hung worker.
            "--timeout",
            "300",
            "ingestor:create_app()",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                token = login(port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield port, token
    finally:
        server.terminate()
        server.wait(30)


def login(port: int) -> str:
    """A bearer token of the bench user (OSError while the server does not answer yet)."""
    connection = HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(
        "POST",
        "/api/v1/login",
        body=json.dumps({"username": USERNAME, "password": PASSWORD}),
        headers={"Content-Type": "application/json"},
    )
    response = connection.getresponse()
    body = json.loads(response.read())
    if response.status != 200:
        raise OSError(f"login failed: {body}")
    return body["access_token"]
