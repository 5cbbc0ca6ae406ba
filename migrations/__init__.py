"""studyctl's Alembic environment (installed as the package `studyctl.migrations`)."""
