"""POST /api/v1/login: credentials in, a JWT access token out."""

from __future__ import annotations

from datetime import datetime, timezone

from flask import current_app
from flask_jwt_extended import create_access_token
from flask_smorest import abort
from sqlalchemy import select
from werkzeug.security import check_password_hash, generate_password_hash

from ingestor.api.blueprint import ApiBlueprint
from ingestor.api.schemas import LoginSchema, TokenSchema
from ingestor.auth import USER_ID_CLAIM
from ingestor.auth.models import User
from ingestor.database import get_database

blueprint = ApiBlueprint("auth", __name__, url_prefix="/api/v1", description="Log in for a bearer token")

# Checked when the username is unknown, so a wrong username takes as long as a wrong
# password and response times do not tell which usernames exist.
_DUMMY_HASH = generate_password_hash("no user has this password")


@blueprint.post("/login")
@blueprint.arguments(LoginSchema)
@blueprint.response(200, TokenSchema)
@blueprint.errors(400, 401, 403, 413, 429, 503)
@blueprint.doc(security=[])
def login(credentials: dict[str, str]):
    """Exchange a username and password for an access token (rate-limited per username and address)."""
    with get_database().session() as session:
        user = session.scalar(select(User).where(User.username == credentials["username"]))
    if user is None:
        check_password_hash(_DUMMY_HASH, credentials["password"])
        abort(401, message="Wrong username or password.")
    if not user.check_password(credentials["password"]):
        abort(401, message="Wrong username or password.")
    if not user.is_active:
        # Said only to whoever knows the password: it tells them who to ask.
        abort(403, message=f"The user {user.username!r} is disabled; ask an administrator to enable it.")
    expires = current_app.config["JWT_ACCESS_TOKEN_EXPIRES"]
    token = create_access_token(
        identity=user.username, expires_delta=expires, additional_claims={USER_ID_CLAIM: user.id}
    )
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_at": datetime.now(timezone.utc) + expires,
    }
