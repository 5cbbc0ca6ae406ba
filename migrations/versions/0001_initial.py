"""studyctl's first tables: studies (budget, spec snapshot), workers, budget claims.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "studyctl_studies",
        sa.Column("study_name", sa.String(512), primary_key=True),
        sa.Column("n_trials", sa.Integer, nullable=True),
        sa.Column("spec_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("claim_seq", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "studyctl_workers",
        sa.Column("worker_id", sa.String(64), primary_key=True),
        sa.Column("study_name", sa.String(512), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("gpus", sa.String(255), nullable=False, server_default=""),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime, nullable=False),
        sa.Column("trials_done", sa.Integer, nullable=False, server_default="0"),
        sa.Column("current_trial", sa.Integer, nullable=True),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=True),
    )
    op.create_index("ix_studyctl_workers_study_name", "studyctl_workers", ["study_name"])
    op.create_table(
        "studyctl_claims",
        sa.Column("claim_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_name", sa.String(512), nullable=False),
        sa.Column("worker_id", sa.String(64), nullable=False),
        sa.Column("trial_id", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_studyctl_claims_study_name", "studyctl_claims", ["study_name"])


def downgrade() -> None:
    op.drop_index("ix_studyctl_claims_study_name", table_name="studyctl_claims")
    op.drop_table("studyctl_claims")
    op.drop_index("ix_studyctl_workers_study_name", table_name="studyctl_workers")
    op.drop_table("studyctl_workers")
    op.drop_table("studyctl_studies")
