"""`info`: where the cache is, how big, which schema, what it counts."""

from __future__ import annotations

from packcache.store.prune import configured_max_size
from packcache.store.store import Store


def cache_info(store: Store) -> dict[str, object]:
    partials = store.partials()
    with store.read() as conn:
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        layers, size, uncompressed = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(blob_size), 0), COALESCE(SUM(size), 0) FROM layers"
            " WHERE blob_digest IS NOT NULL"
        ).fetchone()

        def count(table: str) -> int:
            return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

        counts = {
            "images": count("images"),
            "refs": count("image_refs"),
            "digests": count("layer_digests"),
            "leases": count("leases"),
        }
    return {
        "cache_dir": str(store.root),
        "index": str(store.layout.index),
        "schema_revision": revision,
        "layers": layers,
        "size": size,
        "uncompressed_size": uncompressed,
        **counts,
        # Temp files in ingest/: running ingests, or killed ones' (reclaimed at the next write).
        "partial_files": len(partials),
        "partial_size": sum(partial.size for partial in partials),
        "max_size": configured_max_size(store),
    }
