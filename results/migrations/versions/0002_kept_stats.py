"""kept_stats: kept-logits statistics as rows (run, top_p, top_k, ...) instead of metric names.

Moves the logits runs' `kept_per_token[p=..,k=..]` / `bytes_per_token[p=..,k=..]` metric rows into
the new table; the downgrade writes them back as metrics (step 0, wall_time 0) and drops it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08
"""
import sqlalchemy as sa
from alembic import op

from results.legacy import kept_metric_names, kept_rows_from_metrics

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_metrics = sa.table("metrics", sa.column("id", sa.Integer), sa.column("run_id", sa.Integer),
                    sa.column("step", sa.Integer), sa.column("tokens", sa.Integer), sa.column("name", sa.String),
                    sa.column("value", sa.Float), sa.column("wall_time", sa.Float))


def upgrade() -> None:
    kept = op.create_table(
        "kept_stats",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), nullable=False, index=True),
        sa.Column("top_p", sa.Float, nullable=False),
        sa.Column("top_k", sa.Integer, nullable=False),
        sa.Column("num_tokens", sa.BigInteger, nullable=False),
        sa.Column("mean_kept_per_token", sa.Float, nullable=False),
        sa.Column("bytes_per_token", sa.Float, nullable=False),
        sa.Column("mean_kept_mass", sa.Float),
        sa.Column("capped_frac", sa.Float),
        sa.Column("sampled_rows", sa.BigInteger),
        sa.UniqueConstraint("run_id", "top_p", "top_k"),
    )
    conn = op.get_bind()
    old = sa.or_(_metrics.c.name.like("kept_per_token[%"), _metrics.c.name.like("bytes_per_token[%"))
    found = conn.execute(sa.select(_metrics.c.id, _metrics.c.run_id, _metrics.c.tokens, _metrics.c.name,
                                   _metrics.c.value).where(old)).all()
    rows = kept_rows_from_metrics([(r.run_id, r.tokens, r.name, r.value) for r in found])
    if rows:
        op.bulk_insert(kept, rows)
    ids = [r.id for r in found]
    for i in range(0, len(ids), 500):
        conn.execute(sa.delete(_metrics).where(_metrics.c.id.in_(ids[i:i + 500])))


def downgrade() -> None:
    conn = op.get_bind()
    kept = sa.table("kept_stats", sa.column("run_id", sa.Integer), sa.column("top_p", sa.Float),
                    sa.column("top_k", sa.Integer), sa.column("num_tokens", sa.BigInteger),
                    sa.column("mean_kept_per_token", sa.Float), sa.column("bytes_per_token", sa.Float))
    rows = []
    for r in conn.execute(sa.select(kept)).mappings():
        for col, name in kept_metric_names(r["top_p"], r["top_k"]).items():
            rows.append({"run_id": r["run_id"], "step": 0, "tokens": r["num_tokens"], "name": name,
                         "value": r[col], "wall_time": 0.0})
    if rows:
        op.bulk_insert(_metrics, rows)
    op.drop_table("kept_stats")
