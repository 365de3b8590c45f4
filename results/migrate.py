"""Schema migrations: Alembic, run programmatically so `pdspace` needs no alembic.ini on disk.

Revisions live in results/migrations/versions (ids 0001, 0002, ...; a database records the last
one it ran in its alembic_version table)."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(db_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", db_url.replace("%", "%%"))
    return cfg


def upgrade(db_url: str, revision: str = "head") -> None:
    """Bring the database at ``db_url`` to ``revision`` (creating it when new)."""
    command.upgrade(alembic_config(db_url), revision)


def downgrade(db_url: str, revision: str) -> None:
    """Take the database at ``db_url`` back to ``revision`` (for tests and for undoing an upgrade)."""
    command.downgrade(alembic_config(db_url), revision)
