"""Where the results database is and how to connect to it: URL resolution, engines (SQLite in WAL
mode with a busy timeout), sessions, and bringing a database's schema up to date."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_DB = "pdspace.db"
_ENGINES: dict[str, Engine] = {}


def resolve_db_url(db: str | None = None) -> str:
    """--db argument, else $PDSPACE_DB, else ./pdspace.db; a plain path becomes a sqlite URL."""
    db = db or os.environ.get("PDSPACE_DB") or DEFAULT_DB
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def sqlite_path(db_url: str) -> str | None:
    """The file of a SQLite URL (None for other backends and in-memory databases)."""
    if not db_url.startswith("sqlite") or "///" not in db_url:
        return None
    path = db_url.split("///", 1)[1].split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return path


def database_exists(db_url: str) -> bool:
    """False only for a SQLite file that is not there (other backends are assumed to exist)."""
    path = sqlite_path(db_url)
    return path is None or Path(path).exists()


def check_exists(db_url: str) -> None:
    """A read-only SQLite URL to a missing file is a user error, not a driver traceback."""
    if not database_exists(db_url):
        raise ValueError(f"database {sqlite_path(db_url)} does not exist (run a study or import results first)")


def backend(db_url: str) -> str:
    """The database kind of a URL: "sqlite", "postgresql", or the URL's scheme for the others."""
    scheme = db_url.split("://", 1)[0].split("+", 1)[0].lower()
    return "postgresql" if scheme in ("postgresql", "postgres") else scheme


def normalise_url(db_url: str) -> str:
    """A PostgreSQL URL without a driver (``postgresql://`` or ``postgres://``) gets the installed
    one: psycopg 3 (``pip install 'pdspace[postgres]'``), else psycopg2. ValueError when neither is."""
    scheme, sep, rest = db_url.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        return db_url
    for module, driver in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql")):
        try:
            __import__(module)
        except ImportError:
            continue
        return f"{driver}://{rest}"
    raise ValueError("a PostgreSQL database needs a driver: pip install 'pdspace[postgres]'")


def make_engine(db_url: str, *, read_only: bool = False) -> Engine:
    """An engine. SQLite gets WAL, a 30 s busy timeout and foreign keys; read-only: the file is
    opened with mode=ro and every connection has PRAGMA query_only. PostgreSQL read-only: every
    transaction is READ ONLY (default_transaction_read_only)."""
    db_url = normalise_url(db_url)
    if db_url.startswith("sqlite"):
        connect_args = {"timeout": 30}
        if read_only:
            path = db_url.split("///", 1)[1]
            db_url = f"sqlite:///file:{path}?mode=ro&uri=true"
        engine = create_engine(db_url, connect_args=connect_args)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            if read_only:
                cur.execute("PRAGMA query_only=ON")
            else:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if read_only and backend(db_url) == "postgresql":
        return create_engine(db_url, connect_args={"options": "-c default_transaction_read_only=on"})
    return create_engine(db_url)


def engine_for(db_url: str) -> Engine:
    """One writing engine per URL per process (workers reuse theirs across units)."""
    if db_url not in _ENGINES:
        _ENGINES[db_url] = make_engine(db_url)
    return _ENGINES[db_url]


@contextmanager
def reading(db_url: str) -> Iterator:
    """A read-only connection (SQLite: mode=ro), its engine disposed afterwards."""
    engine = make_engine(db_url, read_only=True)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits at the end of the block, or rolls back on an exception."""
    factory = sessionmaker(engine, expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def init_db(db_url: str) -> Engine:
    """Create (or upgrade) the schema through the migrations and return an engine."""
    from results.migrate import upgrade  # alembic: imported only by the writers that need it

    upgrade(db_url)
    return make_engine(db_url)


def ensure_schema(db_url: str) -> Engine:
    """init_db, except that a database whose tables exist but that Alembic cannot upgrade (one
    made by Base.metadata.create_all, without a version row) is used as it is."""
    try:
        return init_db(db_url)
    except Exception:
        engine = make_engine(db_url)
        if inspect(engine).has_table("runs") and inspect(engine).has_table("evals"):
            return engine
        engine.dispose()
        raise
