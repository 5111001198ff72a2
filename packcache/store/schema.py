"""The index's tables. migrations/ creates and upgrades them; this module only describes them.

Times are UNIX seconds (REAL) so that LRU ordering and age filters are plain comparisons.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
)

# The newest migration's revision. Opening a cache compares it with the database's revision so
# that the common case (already current) does not pay for importing Alembic.
HEAD_REVISION = "0001_initial"

metadata = MetaData()

layers = Table(
    "layers",
    metadata,
    Column("diff_id", Text, primary_key=True),  # sha256 of the uncompressed tar
    Column("size", Integer, nullable=False),  # uncompressed bytes
    Column("blob_digest", Text, nullable=False, unique=True),  # the stored file's sha256
    Column("blob_size", Integer, nullable=False),  # bytes on disk
    Column("compression", Text, nullable=False),  # none | gzip | zstd
    Column("first_seen", Float, nullable=False),
    Column("last_access", Float, nullable=False),
    Column("access_count", Integer, nullable=False, server_default="0"),
)
Index("ix_layers_last_access", layers.c.last_access)

# Every blob digest known (because it was hashed here) to hold a given diffID: the stored form
# and other compressions seen, e.g. a containerd content store's gzip blob.
layer_digests = Table(
    "layer_digests",
    metadata,
    Column("digest", Text, primary_key=True),
    Column("diff_id", Text, ForeignKey("layers.diff_id", ondelete="CASCADE"), nullable=False),
    Column("media_type", Text),
    Column("size", Integer, nullable=False),
)
Index("ix_layer_digests_diff_id", layer_digests.c.diff_id)

# An image is its config: the same config is the same image on any engine.
images = Table(
    "images",
    metadata,
    Column("config_digest", Text, primary_key=True),
    Column("config", Text, nullable=False),  # the config JSON, verbatim
    Column("os", Text),
    Column("architecture", Text),
    Column("variant", Text),
    Column("created", Text),  # the config's own "created", as written
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)

image_layers = Table(
    "image_layers",
    metadata,
    Column(
        "config_digest",
        Text,
        ForeignKey("images.config_digest", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("position", Integer, primary_key=True),  # 0 = bottom
    Column("diff_id", Text, nullable=False),  # no FK: a layer can be evicted, the image stays
)
Index("ix_image_layers_diff_id", image_layers.c.diff_id)

# Where an image was seen: per engine, the ID that engine gives it and its manifest digest.
image_sources = Table(
    "image_sources",
    metadata,
    Column(
        "config_digest",
        Text,
        ForeignKey("images.config_digest", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("engine", Text, primary_key=True),  # daemon ID from `docker info`, "" for archives
    Column("image_id", Text, nullable=False),
    Column("manifest_digest", Text),
    Column("last_seen", Float, nullable=False),
)
Index("ix_image_sources_image_id", image_sources.c.image_id)

image_refs = Table(
    "image_refs",
    metadata,
    Column("engine", Text, primary_key=True),
    Column("ref", Text, primary_key=True),  # normalized: docker.io/library/foo:latest
    Column(
        "config_digest",
        Text,
        ForeignKey("images.config_digest", ondelete="CASCADE"),
        nullable=False,
    ),
)
Index("ix_image_refs_ref", image_refs.c.ref)
Index("ix_image_refs_config_digest", image_refs.c.config_digest)

# An operation in progress holds a lease on the layers it reads or writes; prune skips them.
leases = Table(
    "leases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("purpose", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
)

lease_layers = Table(
    "lease_layers",
    metadata,
    Column("lease_id", Integer, ForeignKey("leases.id", ondelete="CASCADE"), primary_key=True),
    Column("diff_id", Text, primary_key=True),
)
Index("ix_lease_layers_diff_id", lease_layers.c.diff_id)
