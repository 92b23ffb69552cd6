"""Authentication: users in PostgreSQL, JWT access tokens (flask-jwt-extended).

Every API route but login, health, readiness and the OpenAPI document requires
`Authorization: Bearer <token>`; every way a token can be wrong answers 401 JSON.
The token's user is looked up on every request (no cache): a token stops working as
soon as its user is deleted or disabled (`flask users delete|disable NAME`).

Except while PostgreSQL is unreachable: then a user this process found active at most
USER_LOOKUP_GRACE_SECONDS ago is taken as still active, so pulses keep coming in over
HTTP through a database outage (the intake path needs only RabbitMQ). Users cannot be
deleted or disabled while the database is down, so this only stretches the bound for
a change made just before the outage, by at most the grace.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from flask import Flask, current_app
from flask_jwt_extended import JWTManager

from ingestor.api.errors import OUTAGE_ERRORS, POSTGRESQL, error_response
from ingestor.auth.models import User
from ingestor.database import get_database

logger = logging.getLogger(__name__)

jwt = JWTManager()

# app.extensions key: {user id: (the user, time.monotonic() when found active)}.
ACTIVE_USERS = "auth_active_users"


def init_app(app: Flask) -> None:
    """Configure JWT from the settings and register `flask users`."""
    settings = app.config["SETTINGS"]
    app.config["JWT_SECRET_KEY"] = settings.jwt_secret_key
    app.config["JWT_ACCESS_TOKEN_EXPIRES"] = timedelta(seconds=settings.jwt_expires_seconds)
    app.config["JWT_TOKEN_LOCATION"] = ["headers"]
    app.config["JWT_ALGORITHM"] = "HS256"
    jwt.init_app(app)
    app.extensions[ACTIVE_USERS] = {}

    from ingestor.auth import rate_limit, views
    from ingestor.auth.cli import users_cli

    rate_limit.init_app(app, views.blueprint)
    app.cli.add_command(users_cli)


# The claim binding a token to one user row, not only to a name: a user deleted and
# created again under the same name does not revive the old user's tokens.
USER_ID_CLAIM = "uid"


@jwt.user_lookup_loader
def _token_user(_header: dict[str, Any], claims: dict[str, Any]) -> User | None:
    """The active user the token was issued to; None (a 401) if deleted or disabled.

    PostgreSQL unreachable: the user seen active within the grace, else the error is
    raised, which ingestor.api.errors answers 503 naming PostgreSQL.
    """
    user_id = claims.get(USER_ID_CLAIM)
    if not isinstance(user_id, int) or isinstance(user_id, bool):
        return None
    seen: dict[int, tuple[User, float]] = current_app.extensions[ACTIVE_USERS]
    try:
        with get_database().session() as session:
            user = session.get(User, user_id)
    except OUTAGE_ERRORS[POSTGRESQL]:
        user, found_at = seen.get(user_id, (None, 0.0))
        grace = current_app.config["SETTINGS"].user_lookup_grace_seconds
        if user is None or time.monotonic() - found_at > grace or user.username != claims.get("sub"):
            raise
        logger.info("PostgreSQL unreachable: user %s taken as active, as seen %.0f s ago",
                    user.username, time.monotonic() - found_at)  # fmt: skip
        return user
    if user is None or not user.is_active or user.username != claims.get("sub"):
        seen.pop(user_id, None)
        return None
    seen[user_id] = (user, time.monotonic())
    return user


def _unauthorized(message: str):
    return error_response(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


@jwt.unauthorized_loader
def _missing_token(reason: str):
    return _unauthorized(f"A bearer token is required: {reason}.")


@jwt.invalid_token_loader
def _invalid_token(reason: str):
    return _unauthorized(f"The token is invalid: {reason}.")


def _refuse(message: str):
    """A loader answering 401 with `message`, whatever flask-jwt-extended passes it."""

    def loader(*_: object):
        return _unauthorized(message)

    return loader


jwt.expired_token_loader(_refuse("The token has expired; log in again."))
jwt.revoked_token_loader(_refuse("The token has been revoked."))
jwt.needs_fresh_token_loader(_refuse("A fresh token is required."))
jwt.user_lookup_error_loader(_refuse("The token's user no longer exists or is disabled; log in again."))
