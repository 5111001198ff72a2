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
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("diff_id", sa.Text(), nullable=False, unique=True),
        sa.Column("size", sa.Integer()),
        sa.Column("blob_digest", sa.Text(), unique=True),
        sa.Column("blob_size", sa.Integer()),
        sa.Column("compression", sa.Text()),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_access", sa.Float()),
        sa.Column("access_count", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_index("ix_layers_last_access", "layers", ["last_access"])

    op.create_table(
        "layer_digests",
        sa.Column("digest", sa.Text(), primary_key=True),
        sa.Column(
            "layer_key",
            sa.Integer(),
            sa.ForeignKey("layers.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("media_type", sa.Text()),
        sa.Column("size", sa.Integer(), nullable=False),
    )
    op.create_index("ix_layer_digests_layer_key", "layer_digests", ["layer_key"])

    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("config_digest", sa.Text(), nullable=False, unique=True),
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
            "image_key",
            sa.Integer(),
            sa.ForeignKey("images.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("layer_key", sa.Integer(), sa.ForeignKey("layers.id"), nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index(
        "ix_image_layers_layer_key", "image_layers", ["layer_key", "image_key"], unique=True
    )

    op.create_table(
        "image_sources",
        sa.Column(
            "image_key",
            sa.Integer(),
            sa.ForeignKey("images.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("engine", sa.Text(), primary_key=True),
        sa.Column("image_id", sa.Text(), nullable=False),
        sa.Column("manifest_digest", sa.Text()),
        sa.Column("manifest", sa.Text()),
        sa.Column("last_seen", sa.Float(), nullable=False),
    )
    op.create_index("ix_image_sources_image_id", "image_sources", ["image_id"])

    op.create_table(
        "image_refs",
        sa.Column("engine", sa.Text(), primary_key=True),
        sa.Column("ref", sa.Text(), primary_key=True),
        sa.Column(
            "image_key",
            sa.Integer(),
            sa.ForeignKey("images.id", ondelete="CASCADE"),
            nullable=False,
        ),
    )
    op.create_index("ix_image_refs_ref", "image_refs", ["ref"])
    op.create_index("ix_image_refs_image_key", "image_refs", ["image_key"])

    op.create_table(
        "leases",
        sa.Column("id", sa.Integer(), primary_key=True),
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
