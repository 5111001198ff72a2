"""Builder inputs (buildpack directories and archives, lifecycles) -> the layer made of them.

Revision ID: 0002_input_layers
Revises: 0001_initial
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_input_layers"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "input_layers",
        sa.Column("key", sa.Text(), primary_key=True),
        sa.Column("diff_id", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("recorded", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("input_layers")
