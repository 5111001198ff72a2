"""The index's tables: the one description of the schema a person edits.

migrations/ holds its history (each change is a new revision, its upgrade written to match this
module; a test runs Alembic's autogenerate comparison against a database migrated to head), and
schema_head.sql, which new caches are created with, is generated from the migrations and checked.

Layers and images have integer keys: the joins that `du` and `ls --image` run over every image's
layer list are much faster on integers than on 71-character digests. Times are UNIX seconds
(REAL): LRU order and age filters are plain comparisons.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, ForeignKey, Index, Integer, MetaData, Table, Text

metadata = MetaData()

# Every diffID the index knows: from an ingest, or named by a recorded image's config. The blob
# columns are NULL when the layer is not cached (never ingested, or evicted).
layers = Table(
    "layers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("diff_id", Text, nullable=False, unique=True),  # sha256 of the uncompressed tar
    Column("size", Integer),  # uncompressed bytes, once hashed here
    Column("blob_digest", Text, unique=True),  # the stored file's sha256
    Column("blob_size", Integer),  # bytes on disk
    Column("compression", Text),  # none | gzip | zstd
    Column("first_seen", Float, nullable=False),
    Column("last_access", Float),
    Column("access_count", Integer, nullable=False, server_default="0"),
)
Index("ix_layers_last_access", layers.c.last_access)

# Every blob digest known (because its bytes were hashed here) to hold a layer: the stored form
# and other compressions seen, e.g. a containerd content store's gzip blob.
layer_digests = Table(
    "layer_digests",
    metadata,
    Column("digest", Text, primary_key=True),
    Column("layer_key", Integer, ForeignKey("layers.id", ondelete="CASCADE"), nullable=False),
    Column("media_type", Text),
    Column("size", Integer, nullable=False),
)
Index("ix_layer_digests_layer_key", layer_digests.c.layer_key)

# An image is its config: the same config is the same image on any engine.
images = Table(
    "images",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("config_digest", Text, nullable=False, unique=True),
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
    Column("image_key", Integer, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True),  # 0 = bottom
    Column("layer_key", Integer, ForeignKey("layers.id"), nullable=False),
    sqlite_with_rowid=False,
)
# Each layer once per image (at its first position): repeats of a layer within one image, such as
# identical empty layers, add nothing to what the image needs. The full list is in its config.
Index("ix_image_layers_layer_key", image_layers.c.layer_key, image_layers.c.image_key, unique=True)

# Where an image was seen: per engine, the ID that engine gives it and its manifest digest.
image_sources = Table(
    "image_sources",
    metadata,
    Column("image_key", Integer, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("engine", Text, primary_key=True),  # daemon ID from `docker info`, "" for archives
    Column("image_id", Text, nullable=False),
    Column("manifest_digest", Text),
    # The manifest JSON as that engine holds it: on a containerd store it names the exact
    # blobs (by compressed digest) the content store has for each layer.
    Column("manifest", Text),
    Column("last_seen", Float, nullable=False),
)
Index("ix_image_sources_image_id", image_sources.c.image_id)

image_refs = Table(
    "image_refs",
    metadata,
    Column("engine", Text, primary_key=True),
    Column("ref", Text, primary_key=True),  # normalized: docker.io/library/foo:latest
    Column("image_key", Integer, ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
)
Index("ix_image_refs_ref", image_refs.c.ref)
Index("ix_image_refs_image_key", image_refs.c.image_key)

# An operation in progress holds a lease on the layers it reads or writes; prune skips them.
# By diffID: a lease can be taken before the layer's first ingest.
leases = Table(
    "leases",
    metadata,
    Column("id", Integer, primary_key=True),
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

# What a builder input (a buildpack directory or archive, a lifecycle archive), named by a key
# of its content, was turned into: a layer, plus what was read from the input. An entry counts
# only while its layer is cached, so the input is neither read nor re-tarred again.
input_layers = Table(
    "input_layers",
    metadata,
    Column("key", Text, primary_key=True),
    Column("diff_id", Text, nullable=False),
    Column("value", Text, nullable=False),  # JSON
    Column("recorded", Float, nullable=False),
)
