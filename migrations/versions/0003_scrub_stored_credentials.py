"""Drop credentials from the storage URLs kept in studies' spec snapshots.

Earlier versions stored a spec's `storage` as written, password included; studyctl now
stores URLs without credentials (`studyctl.storage.urls.scrub_url`), and this revision
scrubs the rows written before. Every string in the snapshot that is a URL with a password
or a secret query parameter is scrubbed, wherever it sits. The downgrade keeps the scrubbed
values: a removed password cannot be put back.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from studyctl.storage.urls import scrub_spec_json

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    studies = sa.table("studyctl_studies", sa.column("study_name"), sa.column("spec_json"))
    rows = conn.execute(sa.select(studies.c.study_name, studies.c.spec_json)).all()
    for name, raw in rows:
        scrubbed = scrub_spec_json(raw)
        if scrubbed != raw:
            conn.execute(
                sa.update(studies).where(studies.c.study_name == name).values(spec_json=scrubbed)
            )


def downgrade() -> None:
    pass
