"""Record which studyctl version created each study; index claims by trial.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studyctl_studies") as batch:
        batch.add_column(
            sa.Column("created_by", sa.String(64), nullable=False, server_default="unknown")
        )
    op.create_index("ix_studyctl_claims_trial_id", "studyctl_claims", ["trial_id"])


def downgrade() -> None:
    op.drop_index("ix_studyctl_claims_trial_id", table_name="studyctl_claims")
    with op.batch_alter_table("studyctl_studies") as batch:
        batch.drop_column("created_by")
