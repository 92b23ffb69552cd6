"""PostgreSQL access: the declarative base, the engine and one session per unit of work.

The schema itself belongs to Alembic (`migrations/`); nothing here creates tables.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from flask import Flask, current_app
from sqlalchemy import Engine, MetaData, create_engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from ingestor.commands import CommandGroup
from ingestor.settings import get_settings, settings_of

# Named constraints, so Alembic revisions can refer to them by a stable name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every table of the ingestor."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Database:
    """The engine and session factory of one process."""

    def __init__(self, url: str, connect_timeout_seconds: int = 5) -> None:
        # pre_ping: a worker idles for an hour between flushes, and the server or a
        # proxy may have closed the connection meanwhile. connect_timeout: a server
        # that drops packets is an OperationalError (an outage) in seconds, not a
        # hang for the OS TCP timeout.
        self.engine: Engine = create_engine(
            url, pool_pre_ping=True, connect_args={"connect_timeout": connect_timeout_seconds}
        )
        self.session_factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session for one unit of work, closed at the end of the block."""
        with self.session_factory() as session:
            yield session

    def after_fork(self) -> None:
        """Forget connections inherited from a parent process (they are not ours)."""
        self.engine.dispose(close=False)


def init_app(app: Flask) -> None:
    """Attach a `Database` built from the app's settings."""
    settings = settings_of(app)
    app.extensions["database"] = Database(settings.database_url, settings.database_connect_timeout_seconds)
    app.cli.add_command(db_cli)


def get_database() -> Database:
    """The `Database` of the current app."""
    return current_app.extensions["database"]


def create_database_if_missing(url: str) -> bool:
    """Create the database `url` names, if it does not exist; True if it was created.

    Connects to the server's `postgres` maintenance database to do so.
    """
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    target = make_url(url)
    maintenance = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with maintenance.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}
            ).first()
            if exists:
                return False
            quoted = connection.dialect.identifier_preparer.quote(target.database or "")
            connection.execute(text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        maintenance.dispose()


def alembic_config(url: str):  # -> alembic.config.Config
    """The Alembic configuration of this project, aimed at the database `url`."""
    from alembic.config import Config

    config = Config(str(MIGRATIONS_DIR.parent / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = url
    return config


def upgrade_schema(url: str, revision: str = "head") -> None:
    """Run the Alembic migrations up to `revision` (the only way the schema is built)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

db_cli = CommandGroup("db", help="Create and migrate the PostgreSQL database.")


@db_cli.command("create")
def create_command() -> None:
    """Create the database named by DATABASE_URL if it does not exist."""
    url = get_settings().database_url
    created = create_database_if_missing(url)
    click.echo("database created" if created else "database already exists")


@contextmanager
def _alembic_warnings_only() -> Iterator[None]:
    # Alembic logs each plugin it loads and each step it takes at INFO, on every run:
    # noise in an operator's terminal and in a deploy's release log. Its warnings and
    # errors still show; the command says what it did in one line of its own.
    alembic_logger = logging.getLogger("alembic")
    level = alembic_logger.level
    alembic_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        alembic_logger.setLevel(level)


@db_cli.command("upgrade")
def upgrade_command() -> None:
    """Create the database if needed, then migrate it to the latest revision."""
    url = get_settings().database_url
    created = create_database_if_missing(url)
    with _alembic_warnings_only():
        upgrade_schema(url)
    click.echo(("database created, " if created else "") + "database at the latest revision")
