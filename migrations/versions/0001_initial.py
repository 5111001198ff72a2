"""The first schema: layers, their known digests, images, refs and leases.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "layers",
        sa.Column("diff_id", sa.Text(), primary_key=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("blob_digest", sa.Text(), nullable=False, unique=True),
        sa.Column("blob_size", sa.Integer(), nullable=False),
        sa.Column("compression", sa.Text(), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_access", sa.Float(), nullable=False),
        sa.Column("access_count", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_index("ix_layers_last_access", "layers", ["last_access"])

    op.create_table(
        "layer_digests",
        sa.Column("digest", sa.Text(), primary_key=True),
        sa.Column(
            "diff_id",
            sa.Text(),
            sa.ForeignKey("layers.diff_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("media_type", sa.Text()),
        sa.Column("size", sa.Integer(), nullable=False),
    )
    op.create_index("ix_layer_digests_diff_id", "layer_digests", ["diff_id"])

    op.create_table(
        "images",
        sa.Column("config_digest", sa.Text(), primary_key=True),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("os", sa.Text()),
        sa.Column("architecture", sa.Text()),
        sa.Column("variant", sa.Text()),
        sa.Column("created", sa.Text()),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
    )

    op.create_table(
        "image_layers",
        sa.Column(
            "config_digest",
            sa.Text(),
            sa.ForeignKey("images.config_digest", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("diff_id", sa.Text(), nullable=False),
    )
    op.create_index("ix_image_layers_diff_id", "image_layers", ["diff_id"])

    op.create_table(
        "image_sources",
        sa.Column(
            "config_digest",
            sa.Text(),
            sa.ForeignKey("images.config_digest", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("engine", sa.Text(), primary_key=True),
        sa.Column("image_id", sa.Text(), nullable=False),
        sa.Column("manifest_digest", sa.Text()),
        sa.Column("last_seen", sa.Float(), nullable=False),
    )
    op.create_index("ix_image_sources_image_id", "image_sources", ["image_id"])

    op.create_table(
        "image_refs",
        sa.Column("engine", sa.Text(), primary_key=True),
        sa.Column("ref", sa.Text(), primary_key=True),
        sa.Column(
            "config_digest",
            sa.Text(),
            sa.ForeignKey("images.config_digest", ondelete="CASCADE"),
            nullable=False,
        ),
    )
    op.create_index("ix_image_refs_ref", "image_refs", ["ref"])
    op.create_index("ix_image_refs_config_digest", "image_refs", ["config_digest"])

    op.create_table(
        "leases",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("expires", sa.Float(), nullable=False),
    )
    op.create_table(
        "lease_layers",
        sa.Column(
            "lease_id",
            sa.Integer(),
            sa.ForeignKey("leases.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("diff_id", sa.Text(), primary_key=True),
    )
    op.create_index("ix_lease_layers_diff_id", "lease_layers", ["diff_id"])


def downgrade() -> None:
    for table in (
        "lease_layers",
        "leases",
        "image_refs",
        "image_sources",
        "image_layers",
        "images",
        "layer_digests",
        "layers",
    ):
        op.drop_table(table)
