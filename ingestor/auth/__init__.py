"""Users of the API: the User model (hashed passwords), who is active, `flask users`.

The domain only: it knows nothing of HTTP. Logging in and bearer tokens are the API's
(ingestor.api.login, ingestor.api.tokens), which call `ingestor.auth.users`.
"""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Register `flask users` on `app`."""
    from ingestor.auth.cli import users_cli

    app.cli.add_command(users_cli)
