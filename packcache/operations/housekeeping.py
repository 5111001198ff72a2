"""Keeping the cache in bounds: `rm` of images and layers, and the size cap around commands that
add data."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from packcache.errors import PackcacheError
from packcache.store.prune import configured_max_size, enforce_size_cap, remove_image, remove_layer
from packcache.store.store import EvictedLayer, Store

log = logging.getLogger("packcache")


@dataclass
class RemoveReport:
    """What `rm` evicted; never a dry run, named so its JSON reads like prune's."""

    dry_run: bool = False
    removed: list[EvictedLayer] = field(default_factory=list)

    @property
    def reclaimed(self) -> int:
        return sum(layer.blob_size for layer in self.removed)


def remove(store: Store, images: Sequence[str], layers: Sequence[str]) -> RemoveReport:
    """Forget `images` (evicting the layers no other cached image uses) and evict `layers`.

    Every name is resolved before anything is removed, so a typo in the last one changes
    nothing; two names of one image or layer remove it once.
    """
    config_digests = dict.fromkeys(store.resolve_image(ref) for ref in images)
    diff_ids = {store.resolve_layer(layer): layer for layer in layers}
    report = RemoveReport()
    for config_digest in config_digests:
        report.removed += remove_image(store, config_digest)
    for diff_id, name in diff_ids.items():
        if any(evicted.diff_id == diff_id for evicted in report.removed):
            continue  # an image named too used it alone
        found = remove_layer(store, diff_id)
        if not found:
            raise PackcacheError(f"layer {name} is in use by a running operation; not removed")
        report.removed += found
    return report


@contextmanager
def size_capped(store: Store) -> Iterator[None]:
    """Around a command that adds data: read the configured cap first, so a bad setting stops
    the command before it writes anything, and prune to the cap once the command succeeded."""
    cap = configured_max_size(store)
    yield
    result = enforce_size_cap(store, cap)
    if result is not None and result.removed:
        import humanize  # only to say what the cap evicted

        log.warning(
            "size cap: evicted %d layers (%s)",
            len(result.removed),
            humanize.naturalsize(result.reclaimed),
        )
