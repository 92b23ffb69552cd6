"""Bearer tokens (JWT, flask-jwt-extended): issued at login, checked on every other route.

Every API route but login, health, readiness, metrics (its own METRICS_TOKEN) and the
OpenAPI document requires `Authorization: Bearer <token>`; every way a token can be wrong answers 401 JSON.
The token's user must still be active (ingestor.auth.users: looked up at most every
USER_CACHE_SECONDS, with a grace while PostgreSQL is unreachable).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Flask, current_app
from flask_jwt_extended import JWTManager

from ingestor.api.errors import OUTAGE_ERRORS, POSTGRESQL, error_response
from ingestor.auth.models import User
from ingestor.auth.users import ActiveUsers
from ingestor.settings import settings_of

jwt = JWTManager()

# app.extensions key: the ActiveUsers of the process.
ACTIVE_USERS = "auth_active_users"

# The claim binding a token to one user row, not only to a name: a user deleted and
# created again under the same name does not revive the old user's tokens.
USER_ID_CLAIM = "uid"


def init_app(app: Flask) -> None:
    """Configure JWT from the settings."""
    settings = settings_of(app)
    app.config["JWT_SECRET_KEY"] = settings.jwt_secret_key
    app.config["JWT_ACCESS_TOKEN_EXPIRES"] = timedelta(seconds=settings.jwt_expires_seconds)
    app.config["JWT_TOKEN_LOCATION"] = ["headers"]
    app.config["JWT_ALGORITHM"] = "HS256"
    jwt.init_app(app)
    app.extensions[ACTIVE_USERS] = ActiveUsers(
        settings.user_lookup_grace_seconds, OUTAGE_ERRORS[POSTGRESQL], settings.user_cache_seconds
    )


@jwt.user_lookup_loader
def _token_user(_header: dict[str, Any], claims: dict[str, Any]) -> User | None:
    """The active user the token was issued to; None (a 401) if deleted or disabled."""
    user_id = claims.get(USER_ID_CLAIM)
    if not isinstance(user_id, int) or isinstance(user_id, bool):
        return None
    users: ActiveUsers = current_app.extensions[ACTIVE_USERS]
    return users.active_user(user_id, claims.get("sub"))


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
