"""The results database: SQLAlchemy models, engine setup (SQLite WAL + busy timeout), sessions.

Schema contract in docs/internals.md. No ray here: analysis imports this module.
"""
from __future__ import annotations

import datetime as dt
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import (
    JSON,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

DEFAULT_DB = "pdspace.db"
RUN_KINDS = ("data", "teacher", "logits", "student", "baseline", "external")
RUN_STATUSES = ("pending", "running", "completed", "failed")


def utcnow() -> dt.datetime:
    """Naive UTC now (what the DateTime columns hold)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    spec: Mapped[dict] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    study_runs: Mapped[list["StudyRun"]] = relationship(back_populates="study")


class Run(Base):
    """One unit of work, content-addressed by the hash of its resolved config."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    config_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    config: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    host: Mapped[str | None] = mapped_column(String(200), nullable=True)
    versions: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    git_rev: Mapped[str | None] = mapped_column(String(64), nullable=True)
    artifact_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    study_runs: Mapped[list["StudyRun"]] = relationship(back_populates="run")


class StudyRun(Base):
    """A run as a study uses it, under the study's readable trial id."""

    __tablename__ = "study_runs"
    __table_args__ = (UniqueConstraint("study_id", "trial_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    trial_id: Mapped[str] = mapped_column(String(500))
    factor: Mapped[str | None] = mapped_column(String(200), nullable=True)
    value: Mapped[str | None] = mapped_column(String(200), nullable=True)
    study: Mapped[Study] = relationship(back_populates="study_runs")
    run: Mapped[Run] = relationship(back_populates="study_runs")


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("run_id", "step", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    wall_time: Mapped[float] = mapped_column(Float)


class Eval(Base):
    __tablename__ = "evals"
    __table_args__ = (UniqueConstraint("run_id", "step", "task", "metric"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(Integer)
    task: Mapped[str] = mapped_column(String(200))
    metric: Mapped[str] = mapped_column(String(100))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    stderr: Mapped[float | None] = mapped_column(Float, nullable=True)
    extra: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Artifact(Base):
    __tablename__ = "artifacts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(50))
    path: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    checksum: Mapped[str | None] = mapped_column(String(64), nullable=True)


def resolve_db_url(db: str | None = None) -> str:
    """--db argument, else $PDSPACE_DB, else ./pdspace.db; a plain path becomes a sqlite URL."""
    db = db or os.environ.get("PDSPACE_DB") or DEFAULT_DB
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def make_engine(db_url: str, *, read_only: bool = False) -> Engine:
    """An engine; SQLite gets WAL, a 30 s busy timeout and foreign keys (read-only: mode=ro)."""
    if db_url.startswith("sqlite"):
        connect_args = {"timeout": 30}
        if read_only:
            path = db_url.split("///", 1)[1]
            db_url = f"sqlite:///file:{path}?mode=ro&uri=true"
        engine = create_engine(db_url, connect_args=connect_args)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            if not read_only:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    engine = create_engine(db_url)
    return engine


def init_db(db_url: str) -> Engine:
    """Create (or upgrade) the schema and return an engine."""
    from orchestrator.migrate import upgrade  # alembic; local import keeps analysis light

    upgrade(db_url)
    return make_engine(db_url)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
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
