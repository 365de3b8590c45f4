"""Alembic environment and revisions for the results database."""
