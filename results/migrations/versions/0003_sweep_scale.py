"""Sweep scale: 64-bit counts, and indexes that serve the reads.

- 64-bit integers (BIGINT) for what can pass 2^31: metrics and evals ids, steps and tokens (a
  paper-scale run sees 10^11 tokens), and artifacts.bytes (a logits store can hold 10^13 bytes).
  PostgreSQL's INTEGER is 32-bit and refuses larger values ("integer out of range"); SQLite's
  INTEGER already holds 64 bits, so there the columns are left as they are (changing a declared
  type would copy every table).
- Indexes: metrics (run_id, name, step), which the reads use (a run's evaluation rows by name, its
  final val_loss, a training curve thinned per run and name); the single-column run_id indexes of
  metrics, evals and kept_stats are dropped, since each table's unique constraint starts with
  run_id and serves the same lookups.

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-12
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

WIDE = {"metrics": ("id", "step", "tokens"), "evals": ("id", "step", "tokens"), "artifacts": ("bytes",)}
"""table -> columns that become BIGINT (not on SQLite)."""
NULLABLE = {("artifacts", "bytes")}
SERIAL = ("metrics", "evals")
"""Tables whose id sequence (PostgreSQL) widens with the column."""
DROPPED = (("ix_metrics_run_id", "metrics"), ("ix_evals_run_id", "evals"), ("ix_kept_stats_run_id", "kept_stats"))
NEW_INDEX = ("ix_metrics_run_name_step", "metrics", ["run_id", "name", "step"])


def _retype(new: type, old: type) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        return
    for table, columns in WIDE.items():
        for column in columns:
            op.alter_column(table, column, type_=new(), existing_type=old(),
                            existing_nullable=(table, column) in NULLABLE)
    if bind.dialect.name == "postgresql":
        for table in SERIAL:
            seq = bind.execute(sa.text(f"SELECT pg_get_serial_sequence('{table}', 'id')")).scalar()
            if seq:
                op.execute(f"ALTER SEQUENCE {seq} AS {'BIGINT' if new is sa.BigInteger else 'INTEGER'}")


def upgrade() -> None:
    _retype(sa.BigInteger, sa.Integer)
    for name, table in DROPPED:
        op.drop_index(name, table_name=table)
    op.create_index(*NEW_INDEX)


def downgrade() -> None:
    op.drop_index(NEW_INDEX[0], table_name=NEW_INDEX[1])
    for name, table in DROPPED:
        op.create_index(name, table, ["run_id"])
    _retype(sa.Integer, sa.BigInteger)  # PostgreSQL refuses (integer out of range) rather than lose a value
