"""The results database's tables, as SQLAlchemy ORM classes (the one declaration of the schema).

Migrations (results/migrations) create and change these tables; docs/internals.md lists them.
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

BigId = BigInteger().with_variant(Integer, "sqlite")
"""A 64-bit primary key (SQLite: INTEGER, its 64-bit rowid; BIGINT there would not autoincrement)."""

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
    """One value of a run at a step. Counts are 64-bit (migration 0003). The unique key (run_id,
    step, name) serves upserts; (run_id, name, step) serves the reads: a run's series of one name."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("run_id", "step", "name"),
                      Index("ix_metrics_run_name_step", "run_id", "name", "step"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    step: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    wall_time: Mapped[float] = mapped_column(Float)


class Eval(Base):
    __tablename__ = "evals"
    __table_args__ = (UniqueConstraint("run_id", "step", "task", "metric"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    step: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger)
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
    bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    checksum: Mapped[str | None] = mapped_column(String(64), nullable=True)


class KeptStat(Base):
    """Kept-logits statistics of one (top_p, top_k) truncation derived from a logits run's store
    (core.logits.kept_stats): what Figures 2-3's right-hand axes draw. Migration 0002."""

    __tablename__ = "kept_stats"
    __table_args__ = (UniqueConstraint("run_id", "top_p", "top_k"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    top_p: Mapped[float] = mapped_column(Float)
    top_k: Mapped[int] = mapped_column(Integer)
    num_tokens: Mapped[int] = mapped_column(BigInteger)
    """Token positions the store covers."""
    mean_kept_per_token: Mapped[float] = mapped_column(Float)
    bytes_per_token: Mapped[float] = mapped_column(Float)
    """Bytes per token of a store written at this truncation (entries, counts, offsets; no stats)."""
    mean_kept_mass: Mapped[float | None] = mapped_column(Float, nullable=True)
    capped_frac: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Rows whose top-p prefix was cut by top_k."""
    sampled_rows: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Rows the statistics were measured on (None: migrated from the old metric rows)."""


KEPT_STAT_FIELDS = ("top_p", "top_k", "num_tokens", "mean_kept_per_token", "bytes_per_token", "mean_kept_mass",
                    "capped_frac", "sampled_rows")
