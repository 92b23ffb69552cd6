"""`flask users ...`: managing API users from the command line."""

from __future__ import annotations

import click
from sqlalchemy import select

from ingestor.auth.models import User
from ingestor.commands import CommandGroup
from ingestor.database import get_database

users_cli = CommandGroup("users", help="Manage API users.")

MIN_PASSWORD_LENGTH = 12


@users_cli.command("create")
@click.argument("username")
@click.password_option(help="The password (prompted, twice, when omitted).")
def create_user(username: str, password: str) -> None:
    """Create the API user USERNAME."""
    if not 1 <= len(username) <= 64 or not username.isprintable():
        raise click.BadParameter("must be 1 to 64 printable characters", param_hint="USERNAME")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise click.BadParameter(
            f"must be at least {MIN_PASSWORD_LENGTH} characters", param_hint="--password"
        )
    with get_database().session() as session, session.begin():
        if session.scalar(select(User.id).where(User.username == username)) is not None:
            raise click.ClickException(f"user {username!r} already exists")
        user = User(username=username)
        user.set_password(password)
        session.add(user)
    click.echo(f"user {username!r} created")


def _find_user(session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise click.ClickException(f"no user {username!r}")
    return user


def _set_active(username: str, active: bool) -> None:
    with get_database().session() as session, session.begin():
        _find_user(session, username).is_active = active
    click.echo(f"user {username!r} {'enabled' if active else 'disabled'}")


@users_cli.command("disable")
@click.argument("username")
def disable_user(username: str) -> None:
    """Disable USERNAME: it cannot log in, and its tokens are refused from the next request on."""
    _set_active(username, False)


@users_cli.command("enable")
@click.argument("username")
def enable_user(username: str) -> None:
    """Enable USERNAME again (its unexpired tokens work again)."""
    _set_active(username, True)


@users_cli.command("delete")
@click.argument("username")
def delete_user(username: str) -> None:
    """Delete USERNAME: its tokens are refused from the next request on, even if the name is reused."""
    with get_database().session() as session, session.begin():
        session.delete(_find_user(session, username))
    click.echo(f"user {username!r} deleted")
