"""The users who may log in to the API."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Identity, String, func, true
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash

from ingestor.database import Base


class User(Base):
    """An API user; only a salted, slow hash of the password is stored."""

    __tablename__ = "api_user"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    # A disabled user cannot log in, and the tokens it holds stop working.
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=true())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    def set_password(self, password: str) -> None:
        """Store a hash of `password` (scrypt, Werkzeug's default)."""
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        """True if `password` is this user's."""
        return check_password_hash(self.password_hash, password)
