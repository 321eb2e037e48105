"""Alembic migrations of the SQL history (a package so a wheel carries them)."""
