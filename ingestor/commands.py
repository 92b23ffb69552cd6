"""The `flask db|users|pulses` command groups: a service that is down is one line, not a traceback.

An operator runs these by hand, often during the incident itself. A stack trace hides
which service is out and reads like a bug in the command; one line naming the service
says what to do. Every command is safe to run again: each step it takes is a
transaction or idempotent, so stopping at an outage leaves nothing half done that a
second run would count twice.

Plumbing: knows the services, no domain.
"""

from __future__ import annotations

from typing import Any

import click
from flask.cli import AppGroup

from ingestor.outages import OUTAGE_ERRORS, REDIS_FULL_ERRORS, SERVICE_NAMES


def _first_line(error: BaseException) -> str:
    # SQLAlchemy wraps the driver's error and appends a background link; the driver's
    # own first line names the host and what went wrong.
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def outage_message(error: BaseException) -> str | None:
    """One line naming the service `error` says is out, or None when it is no outage."""
    if isinstance(error, REDIS_FULL_ERRORS):
        return f"Redis: out of memory ({_first_line(error)}); run it again once Redis has room"
    for service, errors in OUTAGE_ERRORS.items():
        if isinstance(error, errors):
            name = SERVICE_NAMES[service]
            return f"{name}: {_first_line(error)}; run it again once {name} answers"
    return None


class CommandGroup(AppGroup):
    """An `AppGroup` whose commands end in `Error: <service>: ...` (exit 1) on an outage."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as error:
            message = outage_message(error)
            if message is None:
                raise
            raise click.ClickException(message) from None


__all__ = ["CommandGroup", "outage_message"]
