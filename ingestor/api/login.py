"""POST /api/v1/login: credentials in, a JWT access token out."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import current_app
from flask_jwt_extended import create_access_token
from flask_smorest import abort

from ingestor.api.blueprint import ApiBlueprint
from ingestor.api.schemas import LoginSchema, TokenSchema
from ingestor.api.tokens import USER_ID_CLAIM
from ingestor.auth.users import authenticate

# Named "auth" as before the login moved here: the OpenAPI tag and endpoint names stay.
blueprint = ApiBlueprint("auth", __name__, url_prefix="/api/v1", description="Log in for a bearer token")


@blueprint.post("/login")
@blueprint.arguments(LoginSchema)
@blueprint.response(200, TokenSchema)
@blueprint.errors(400, 401, 403, 413, 429, 503)
@blueprint.doc(security=[])
def login(credentials: dict[str, str]):
    """Exchange a username and password for an access token (rate-limited per username and address)."""
    user = authenticate(credentials["username"], credentials["password"])
    if user is None:
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
        "expires_at": datetime.now(UTC) + expires,
    }
