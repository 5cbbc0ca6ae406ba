"""Index Optuna's trials by (study_id, trial_id), for numbering a new trial.

* ``ix_studyctl_trials_study_trial`` on Optuna's ``trials (study_id, trial_id)``:
  `StudyctlStorage` numbers a new trial from the study's previous one (the greatest
  ``trial_id`` below it) instead of counting every trial of the study, as Optuna does. On
  PostgreSQL that read is one index entry through this index; Optuna's own index on
  ``study_id`` alone would return every trial of the study to sort. (On SQLite Optuna's
  index already serves: its entries carry the rowid, ``trial_id``, in order.) Additive like
  revision 0004's index, with studyctl's prefix, and created only where Optuna's tables
  exist.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TRIALS_INDEX = "ix_studyctl_trials_study_trial"


def upgrade() -> None:
    # Idempotent, as 0004: the index may already be there (created again by `db upgrade`).
    if sa.inspect(op.get_bind()).has_table("trials"):
        op.execute(f"CREATE INDEX IF NOT EXISTS {TRIALS_INDEX} ON trials (study_id, trial_id)")


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {TRIALS_INDEX}")
