"""Keep each study's finished-trial count in `studyctl_studies`; index Optuna's trials by
(study_id, state).

* ``studyctl_studies.n_finished``: the study's COMPLETE and PRUNED trials, kept by
  `StudyctlStorage` in the same transaction as each trial's end, so a claim reads one row
  instead of counting every trial of the study. This revision fills it from the trials
  already in the database.
* ``ix_studyctl_trials_study_state`` on Optuna's ``trials (study_id, state)``: the queries
  that look for a study's trials in one state (RUNNING for the heartbeat sweeps, WAITING
  for the next trial to run, the state counts of `status`) read those rows only. The
  index is additive: Optuna's queries and migrations do not depend on it, and it carries
  studyctl's prefix so that Optuna's schema never names it. It is created only where
  Optuna's tables exist (a database studyctl set up always has them).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TRIALS_INDEX = "ix_studyctl_trials_study_state"

_BACKFILL = (
    "UPDATE studyctl_studies SET n_finished = ("
    "SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
    "WHERE s.study_name = studyctl_studies.study_name "
    "AND t.state IN ('COMPLETE', 'PRUNED'))"
)


def _has_optuna_trials() -> bool:
    return bool(sa.inspect(op.get_bind()).has_table("trials"))


def _has_counter() -> bool:
    columns = sa.inspect(op.get_bind()).get_columns("studyctl_studies")
    return any(c["name"] == "n_finished" for c in columns)


def upgrade() -> None:
    # Idempotent, like the index below: a database stamped with an older revision than
    # its tables have (restored from a backup's version row, stamped by hand) upgrades too.
    if not _has_counter():
        with op.batch_alter_table("studyctl_studies") as batch:
            batch.add_column(
                sa.Column("n_finished", sa.Integer, nullable=False, server_default="0")
            )
    if _has_optuna_trials():
        op.execute(f"CREATE INDEX IF NOT EXISTS {TRIALS_INDEX} ON trials (study_id, state)")
        op.execute(_BACKFILL)


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {TRIALS_INDEX}")
    with op.batch_alter_table("studyctl_studies") as batch:
        batch.drop_column("n_finished")
