"""Alembic migration chain (runs on SQLite and PostgreSQL)."""
