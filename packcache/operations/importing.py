"""`packcache import IMAGE...`: bring images from the daemon into the cache.

Images the cache already holds whole (same image ID, every layer cached) are not saved at all:
only their tags are recorded. The rest come from one `docker save` stream for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from packcache.errors import NotFoundError
from packcache.image.inspected import InspectedImage
from packcache.operations.launch_choice import LaunchChoice
from packcache.operations.load_planners import planner_for
from packcache.store.store import ImageRecord, Lease, Store
from packcache.transports.daemon import Daemon

if TYPE_CHECKING:
    from packcache.archive.save_reader import ImportReport


@dataclass
class DaemonImportReport:
    archive: ImportReport
    already_cached: list[str] = field(default_factory=list)  # refs recorded without a save
    saved: list[str] = field(default_factory=list)  # refs read from `docker save`
    # refs whose config the daemon's storage gave and whose layers the launch caches did
    from_launch_cache: list[str] = field(default_factory=list)


def cached_config(
    store: Store,
    inspected: InspectedImage,
    layers: list[str] | None = None,
    lease: Lease | None = None,
) -> str | None:
    """The config digest of an inspected daemon image if the cache knows it and holds its
    `layers` (default: all of them), which `lease` then holds."""
    try:
        config_digest = store.resolve_image(inspected.id)
    except NotFoundError:
        return None
    if layers is None:
        layers = list(inspected.diff_ids)
    if store.cached_diff_ids(layers, lease) != set(layers):
        return None
    return config_digest


def import_images(
    store: Store,
    daemon: Daemon,
    refs: list[str],
    *,
    lease: Lease | None = None,
    launch: LaunchChoice | None = None,
) -> DaemonImportReport:
    # Imported here: a warm rebase needs only cached_config of this module.
    from packcache.archive.save_reader import ImportReport, import_archive
    from packcache.operations.launch_layers import fill_from_host

    inspected = {ref: daemon.inspect_image(ref) for ref in refs}  # every name checked first
    report = DaemonImportReport(archive=ImportReport())
    references_blobs = planner_for(store, daemon).references_blobs
    to_save = []
    for ref, info in inspected.items():
        config_digest = cached_config(store, info, lease=lease)
        manifest = None
        if config_digest is not None and references_blobs:
            # The manifest names the blobs this content store holds: needed to reference them.
            manifest = store.manifest(info.id)
            if manifest is None:
                config_digest = None
        if config_digest is None:
            # Before a save: the daemon's storage and pack's launch caches may give it all.
            layers = list(info.diff_ids)
            if (
                launch is not None
                and fill_from_host(store, daemon, info, layers, launch, lease=lease).config_digest
            ):
                report.from_launch_cache.append(ref)
                continue
            to_save.append(ref)
            continue
        store.record_image(
            ImageRecord(
                config=store.image_config(config_digest),
                engine=daemon.info.id,
                image_id=info.id,
                manifest_digest=info.id if manifest else None,
                manifest=manifest,
                refs=list(info.repo_tags),
            )
        )
        report.already_cached.append(ref)
    if to_save:
        with daemon.save(to_save) as stream:
            report.archive = import_archive(
                store,
                stream,
                engine=daemon.info.id,
                image_ids={info.id for info in inspected.values()},
                lease=lease,
            )
        report.saved = to_save
    return report
