"""Who may use the API: a user's credentials checked, and whether a token's user is still active.

A token's user is looked up in PostgreSQL at most every USER_CACHE_SECONDS per process
(default 5; 0: on every request): a token stops working at most that long after its
user is deleted or disabled (`flask users delete|disable NAME`). A lookup is a session,
a connection from the pool and a round trip, 0.5-1.1 ms of the web process's CPU per
request measured in process (a cached user costs a dictionary read). Login never uses
the cache: a password is always checked against the row PostgreSQL holds.

Except while PostgreSQL is unreachable: then a user this process found active at most
USER_LOOKUP_GRACE_SECONDS ago is taken as still active, so pulses keep coming in over
HTTP through a database outage (the intake path needs only RabbitMQ). Users cannot be
deleted or disabled while the database is down, so this only stretches the bound for
a change made just before the outage, by at most the grace.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import select
from werkzeug.security import check_password_hash, generate_password_hash

from ingestor.auth.models import User
from ingestor.database import get_database

logger = logging.getLogger(__name__)

# Checked when the username is unknown, so a wrong username takes as long as a wrong
# password and response times do not tell which usernames exist.
_DUMMY_HASH = generate_password_hash("no user has this password")


def authenticate(username: str, password: str) -> User | None:
    """The user `username` if `password` is theirs, active or not; None otherwise."""
    with get_database().session() as session:
        user = session.scalar(select(User).where(User.username == username))
    if user is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    return user if user.check_password(password) else None


class ActiveUsers:
    """The active users of one process, looked up in PostgreSQL, remembered for the cache
    seconds (taken without a lookup) and for the grace (taken while PostgreSQL is down).

    `unreachable`: the errors meaning PostgreSQL cannot be reached (the caller's list of
    outage errors; this domain knows no HTTP or retry policy).
    """

    def __init__(
        self, grace_seconds: int, unreachable: tuple[type[BaseException], ...], cache_seconds: int = 0
    ) -> None:
        self.grace_seconds = grace_seconds
        self.unreachable = unreachable
        self.cache_seconds = cache_seconds
        # {user id: (the user, time.monotonic() when found active)}
        self._seen: dict[int, tuple[User, float]] = {}

    def active_user(self, user_id: int, username: str | None) -> User | None:
        """The user `user_id` if it exists, is active and is still named `username`; else None.

        A user found active in PostgreSQL less than the cache seconds ago is taken as it
        was, without a lookup. PostgreSQL unreachable: the user seen active within the
        grace, else the error is raised (the API answers it 503 naming PostgreSQL).
        """
        seen = self._seen.get(user_id)
        # The time is when PostgreSQL last said "active", never refreshed by a cache hit,
        # so a disabled user is seen at most cache_seconds after its last lookup.
        if (
            seen is not None
            and time.monotonic() - seen[1] < self.cache_seconds
            and seen[0].username == username
        ):
            return seen[0]
        try:
            with get_database().session() as session:
                user = session.get(User, user_id)
        except self.unreachable:
            user, found_at = self._seen.get(user_id, (None, 0.0))
            if user is None or time.monotonic() - found_at > self.grace_seconds or user.username != username:
                raise
            logger.info(
                "PostgreSQL unreachable: user %s taken as active, as seen %.0f s ago",
                user.username,
                time.monotonic() - found_at,
            )
            return user
        if user is None or not user.is_active or user.username != username:
            self._seen.pop(user_id, None)
            return None
        self._seen[user_id] = (user, time.monotonic())
        return user
