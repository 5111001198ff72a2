"""`packcache rebase`: put an app image on a new run image, as the CNB platform spec's
rebaser does (lifecycle phase/rebaser.go), without exporting what the cache already holds.

Reads top to bottom: find the app and run images in the daemon, validate, make sure the app
layers (and, on a containerd store, the run image's blob digests) are known to the cache, build
the new config, load it sending only what the daemon lacks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from packcache.errors import NotFoundError, PackcacheError, UsageError
from packcache.image import cnb
from packcache.image.cnb import LifecycleMetadata
from packcache.image.inspected import InspectedImage
from packcache.operations.importing import cached_config, import_images
from packcache.operations.launch_choice import CACHE, EVERY_LAUNCH_CACHE, SAVE, LaunchChoice
from packcache.operations.load_planners import (
    REUSE,
    SendPolicy,
    pack_method,
    planner_for,
    prepare,
)
from packcache.operations.loading import LoadReport, base_image_needed, load_config
from packcache.operations.run_image_fetch import (
    ImageFetch,
    RebaseFetch,
    RunImagePull,
    choose_run_image,
    described_in_cache,
    fetch_rebase_images,
)
from packcache.refs import looks_like_id, normalize
from packcache.store.store import Lease, Store
from packcache.transports.daemon import Daemon

# Reading the daemon's storage and the launch caches is imported where a cold rebase needs it:
# a warm one (the cache holds the app) never does.
if TYPE_CHECKING:
    from packcache.operations.launch_layers import DeferredLaunch


class RebaseError(PackcacheError):
    """The rebase was refused or cannot be done; the image and the cache are untouched."""


@dataclass
class RebaseReport:
    image: str
    tag: str
    old_image_id: str
    new_image_id: str
    run_image: str
    run_image_id: str
    method: str  # cached | no-cache
    dry_run: bool
    app_layers: int
    layers_sent: int = 0
    layers_reused: int = 0
    bytes_sent: int = 0
    manifest_size: int = 0  # of the result's manifest where the daemon has one (containerd)
    saved: list[str] = field(default_factory=list)  # images read with `docker save`
    # Where each app layer came from: cache, launch-cache or docker save.
    layer_sources: dict[str, str] = field(default_factory=dict)
    launch_cache_problems: list[str] = field(default_factory=list)  # entries skipped
    # Images whose save stream was read only until their config passed (the daemon's storage
    # is not readable from here), with the bytes read.
    config_from_save: dict[str, int] = field(default_factory=dict)
    load_method: str = ""  # "containerd" (written into its content store) or "docker load"
    run_image_fetch: ImageFetch | None = None  # how --pull-policy got the run image
    app_image_fetch: ImageFetch | None = None  # and the app image
    timings: dict[str, float] = field(default_factory=dict)


class _Clock:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = round(self.timings.get(phase, 0.0) + now - self.last, 4)
        self.last = now


def _choose_run_image(
    daemon: Daemon, image: str, metadata: LifecycleMetadata, run_image: str | None
) -> str:
    if run_image is not None:
        if not daemon.has_image(run_image):
            raise RebaseError(
                f"run image {run_image} is not in the Docker daemon "
                f"(`docker pull {run_image}` puts it there)"
            )
        return run_image
    # The image itself, else a mirror the daemon holds.
    chosen = choose_run_image(metadata, None, {}, daemon.has_image)
    if chosen is None:
        raise RebaseError(f"{image} names no run image in its metadata: pass --run-image")
    if daemon.has_image(chosen):
        return chosen
    recorded = metadata.run_image
    raise RebaseError(
        f"run image {recorded.image} (and its mirrors {', '.join(recorded.mirrors) or 'none'}) "
        f"is not in the Docker daemon (`docker pull {recorded.image}` puts it there)"
    )


def _api_at_least(version: str, minimum: tuple[int, int]) -> bool:
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= minimum


def _check_platform(app: InspectedImage, run: InspectedImage, image: str, run_ref: str) -> None:
    """Platform API 0.12+: the same os and architecture, and variant and distro where both
    images name one."""
    app_labels, run_labels = app.labels, run.labels
    for what, app_value, run_value, wildcard in (
        ("os", app.os, run.os, False),
        ("architecture", app.architecture, run.architecture, False),
        ("variant", app.variant, run.variant, True),
        ("distro name", app_labels.get(cnb.DISTRO_NAME), run_labels.get(cnb.DISTRO_NAME), True),
        (
            "distro version",
            app_labels.get(cnb.DISTRO_VERSION),
            run_labels.get(cnb.DISTRO_VERSION),
            True,
        ),
    ):
        if wildcard and (not app_value or not run_value):
            continue
        if (app_value or None) != (run_value or None):
            raise RebaseError(
                f"run image {run_ref} has {what} {run_value or '(none)'!r} but {image} "
                f"needs {app_value or '(none)'!r}; use --force to override"
            )


def _check_stack(app: InspectedImage, run: InspectedImage, image: str, run_ref: str) -> None:
    """Platform APIs before 0.12: the same stack ID, and every mixin the app needs."""
    app_stack, run_stack = app.labels.get(cnb.STACK_ID), run.labels.get(cnb.STACK_ID)
    if not app_stack:
        raise RebaseError(f"{image} defines no stack ({cnb.STACK_ID})")
    if not run_stack:
        raise RebaseError(f"run image {run_ref} defines no stack ({cnb.STACK_ID})")
    if app_stack != run_stack:
        raise RebaseError(
            f"incompatible stack: run image {run_ref} is {run_stack!r}, {image} is "
            f"{app_stack!r}; use --force to override"
        )
    app_mixins = cnb.stack_mixins(app.labels, image)
    missing = sorted(app_mixins - cnb.stack_mixins(run.labels, run_ref))
    if missing:
        raise RebaseError(
            f"run image {run_ref} lacks mixin(s) {', '.join(missing)} that {image} needs"
        )


def validate(
    app: InspectedImage,
    run: InspectedImage,
    image: str,
    run_ref: str,
    metadata: LifecycleMetadata,
) -> None:
    """The platform spec's checks; each refusal names the mismatch."""
    if app.labels.get(cnb.REBASABLE) == "false":
        raise RebaseError(
            f"{image} is not marked as rebasable ({cnb.REBASABLE}=false); use --force"
        )
    if _api_at_least(app.config.env_value("CNB_PLATFORM_API"), (0, 12)):
        _check_platform(app, run, image, run_ref)
    else:
        _check_stack(app, run, image, run_ref)
    recorded = metadata.run_image
    if not recorded.matches(run_ref):
        raise RebaseError(
            f"run image {run_ref} is not {recorded.image or '(none)'} or one of its mirrors "
            f"({', '.join(recorded.mirrors) or 'none'}); use --force to use it anyway"
        )


def rebased_config(
    app_config: bytes,
    run: InspectedImage,
    run_ref: str,
    metadata: LifecycleMetadata,
    app_layers: list[str],
    force: bool,
    reference: str | None = None,
) -> bytes:
    """The new image config, as the lifecycle's rebaser makes it (see module docstring).
    `reference` is what runImage.reference records: by default the daemon image ID without
    its algorithm (as the lifecycle records it for a daemon image); a publish rebase passes
    the run image's manifest digest reference. The same function serves both, so a daemon
    and a published rebase of the same inputs differ in nothing else."""
    config = json.loads(app_config)
    run_diff_ids = list(run.diff_ids)
    renamed = force and not metadata.run_image.matches(run_ref)
    container = config.setdefault("config", {})
    labels = {
        key: value
        for key, value in (container.get("Labels") or {}).items()
        if not key.startswith(cnb.RUN_IMAGE_LABEL_PREFIXES)
    }
    labels.update(
        {k: v for k, v in run.labels.items() if k.startswith(cnb.RUN_IMAGE_LABEL_PREFIXES)}
    )
    # For daemon images the lifecycle records the image ID without its algorithm.
    labels[cnb.LIFECYCLE_METADATA] = metadata.rebased(
        run_diff_ids[-1],
        reference if reference is not None else run.id.removeprefix("sha256:"),
        run_ref if renamed else None,
    )
    container["Labels"] = dict(sorted(labels.items()))
    for key, value in (
        ("os", run.os),
        ("architecture", run.architecture),
        ("variant", run.variant),
        ("os.version", run.os_version),
    ):
        if value:
            config[key] = value
        else:
            config.pop(key, None)
    diff_ids = run_diff_ids + app_layers
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    config["created"] = cnb.NORMALIZED_TIME
    config["history"] = [{"created": cnb.NORMALIZED_TIME} for _ in diff_ids]
    config.pop("container", None)
    return json.dumps(config, separators=(",", ":")).encode()


@contextmanager
def _pack_method_store() -> Iterator[Store]:
    """A throw-away store: --no-cache reads everything from the daemon, as pack does."""
    import tempfile  # imported here: only pack's method needs a temporary directory

    with tempfile.TemporaryDirectory(prefix="packcache-no-cache-") as tmp:
        yield Store.open(Path(tmp) / "cache")


@dataclass(frozen=True)
class _Images:
    """The app image and the run image it goes onto, as the daemon has them."""

    app: InspectedImage
    run: InspectedImage
    run_ref: str
    metadata: LifecycleMetadata
    app_layers: list[str]  # the app's own layers, above the old run image's top layer
    run_in_cache: bool = False  # the run image is read from the cache: the daemon lacks it


def _find_images(
    daemon: Daemon,
    image: str,
    run_image: str | None,
    force: bool,
    cached_run: InspectedImage | None = None,
) -> _Images:
    """The app and run images, checked as the platform spec's rebaser checks them;
    `cached_run`: the run image `run_image` as the cache holds it (the daemon does not)."""
    try:
        app = daemon.inspect_image(image)
    except NotFoundError as exc:
        raise RebaseError(
            f"image {image} is not in the Docker daemon (`docker pull {image}` puts it there)"
        ) from exc
    metadata = LifecycleMetadata.from_labels(image, app.labels)
    if cached_run is not None and run_image is not None:
        run_ref, run = run_image, cached_run
    else:
        run_ref = _choose_run_image(daemon, image, metadata, run_image)
        run = daemon.inspect_image(run_ref)
    if not force:
        validate(app, run, image, run_ref, metadata)
    top = metadata.top_layer
    app_diff_ids = list(app.diff_ids)
    if not top or top not in app_diff_ids:
        raise RebaseError(
            f"{image}: the run image top layer {top or '(none)'} named in its metadata is not "
            "one of its layers"
        )
    if not run.diff_ids:
        raise RebaseError(f"run image {run_ref} has no layers")
    app_layers = app_diff_ids[len(app_diff_ids) - app_diff_ids[::-1].index(top) :]
    return _Images(app, run, run_ref, metadata, app_layers, cached_run is not None)


def _cache_images(
    source: Store,
    daemon: Daemon,
    images: _Images,
    report: RebaseReport,
    *,
    policy: SendPolicy,
    lease: Lease | None,
    launch: LaunchChoice,
) -> tuple[str | None, DeferredLaunch | None]:
    """Make sure `source` can give the app's config and layers and the run image's layers
    as the load needs them: from the daemon's storage and the launch caches where they can,
    else one `docker save` of each image still lacking (in a dry run, only noted). Returns
    the app's config digest (None in a dry run that would save the app), and the launch-cache
    layers to read as the load sends them."""
    app_config_digest = cached_config(source, images.app, images.app_layers, lease)
    sources = dict.fromkeys(images.app_layers, CACHE) if app_config_digest else {}
    deferred = None
    if app_config_digest is None and not report.dry_run and policy is REUSE:
        from packcache.operations.launch_layers import fill_from_host

        found = fill_from_host(
            source, daemon, images.app, images.app_layers, launch, lease=lease, defer=True
        )
        sources, deferred = found.sources, found.deferred
        report.launch_cache_problems = found.launch.notes()
        app_config_digest = found.config_digest
        if found.save_head_bytes is not None:
            report.config_from_save[report.image] = found.save_head_bytes
    if app_config_digest is None:
        if not report.dry_run:
            import_images(source, daemon, [report.image], lease=lease)
            app_config_digest = source.resolve_image(images.app.id)
        report.saved.append(report.image)
    if not report.dry_run:
        report.layer_sources = {d: sources.get(d, SAVE) for d in images.app_layers}
    try:
        _cache_run_image(source, daemon, images, report, policy=policy, lease=lease)
    except BaseException:
        if deferred is not None:
            deferred.finish(lease)
        raise
    return app_config_digest, deferred


def _cache_run_image(
    source: Store,
    daemon: Daemon,
    images: _Images,
    report: RebaseReport,
    *,
    policy: SendPolicy,
    lease: Lease | None,
) -> None:
    """Make sure the load can name or send the run image's layers: from the daemon's storage
    (or the head of a save), else a `docker save` of it."""
    run_layers = list(images.run.diff_ids)
    # A run image read from the cache is there whole: its layers are sent from it.
    needed = not images.run_in_cache and base_image_needed(source, daemon, run_layers, policy)
    # On a containerd store the run image's manifest, read from the daemon's content store,
    # names the blobs to reference: no save needed for that.
    reusing = policy is REUSE and not report.dry_run
    if needed and reusing:
        from packcache.operations.engine_configs import record_from_engine, record_from_save_head

        recorded = record_from_engine(source, daemon, images.run)
        if recorded is None:  # the daemon's storage is not readable from here
            recorded, head_bytes = record_from_save_head(source, daemon, images.run)
            report.config_from_save[images.run_ref] = head_bytes
        needed = recorded is None or base_image_needed(source, daemon, run_layers, policy)
    if needed:
        if not report.dry_run:
            import_images(source, daemon, [images.run_ref], lease=lease)
        report.saved.append(images.run_ref)


def _load_rebased(
    source: Store,
    daemon: Daemon,
    config: bytes,
    report: RebaseReport,
    deferred: DeferredLaunch | None,
    *,
    lease: Lease | None,
    policy: SendPolicy,
) -> LoadReport:
    """Load the new image. Launch-cache layers the cache lacks are read as they are sent, into
    the daemon and the cache at once; should one not be what its name claims, that load stops
    before its archive is complete, the app image is saved as before and loaded again. (A
    layer the daemon holds is not sent: it is read into the cache afterwards, and a bad one
    also leads to the save.)"""
    if deferred is None:
        return load_config(source, daemon, config, [report.tag], lease=lease, policy=policy)
    loaded = None
    try:
        loaded = load_config(
            source, daemon, config, [report.tag], lease=lease, policy=policy,
            supplied=deferred.layers(),
        )  # fmt: skip
    except PackcacheError:
        if not deferred.bad:
            raise
    finally:
        report.launch_cache_problems += deferred.finish(lease).notes()
    if deferred.bad:  # what they should have given comes from a save, as without them
        report.layer_sources.update(dict.fromkeys(deferred.bad, SAVE))
        import_images(source, daemon, [report.image], lease=lease)
        report.saved.append(report.image)
    if loaded is None:
        loaded = load_config(source, daemon, config, [report.tag], lease=lease, policy=policy)
    return loaded


def _plan_only(source: Store, daemon: Daemon, images: _Images, report: RebaseReport) -> None:
    """A dry run's report: what a real run would send, every layer the daemon lacks."""
    diff_ids = list(images.run.diff_ids) + images.app_layers
    planner = planner_for(source, daemon)
    report.load_method = planner.method
    held = planner.held(diff_ids)
    report.layers_reused = sum(reference is not None for reference in held)
    report.layers_sent = len(diff_ids) - report.layers_reused


def rebase(
    store: Store,
    daemon: Daemon,
    image: str,
    *,
    run_image: str | None = None,
    tag: str | None = None,
    previous_image: str | None = None,
    force: bool = False,
    no_cache: bool = False,
    dry_run: bool = False,
    lease: Lease | None = None,
    launch: LaunchChoice = EVERY_LAUNCH_CACHE,
    pull: RunImagePull | None = None,
) -> RebaseReport:
    """Rebase `image` onto its run image (or `run_image`), as `tag` (default: in place).
    pack's `previous_image`: rebase that image and name the result `image`. `pull`: how the
    run image is fetched (pack's pull policy); None uses the daemon's copy only."""
    if no_cache and dry_run:
        raise UsageError("--no-cache and --dry-run do not go together")
    if previous_image is not None and tag is not None:
        raise UsageError("--tag and --previous-image do not go together: use one")
    for name in (image, tag, run_image, previous_image):
        if name is not None and not looks_like_id(name):
            normalize(name)  # a malformed name is a usage error, found before any work
    if previous_image is not None:
        image, tag = previous_image, image
    clock = _Clock({})
    if not no_cache:
        prepare(daemon)  # containerd is connected to while the images are inspected
    daemon.prefetch(name for name in (image, run_image) if name is not None)
    fetched = RebaseFetch(image, None, None)
    if pull is not None and not dry_run:  # a dry run changes nothing: it pulls nothing
        fetched = fetch_rebase_images(
            store, daemon, image, result_name=tag or image, run_image=run_image, pull=pull,
            lease=lease, pack_method=no_cache,
        )  # fmt: skip
        run_image = fetched.run.ref if fetched.run is not None else run_image
        image, tag = fetched.app_ref, tag or image  # read from a registry mirror, named as asked
        clock.lap("pull")
    images = _find_images(daemon, image, run_image, force, described_in_cache(store, fetched.run))
    clock.lap("inspect")
    report = RebaseReport(
        image=image,
        tag=tag or image,
        old_image_id=images.app.id,
        new_image_id="",
        run_image=images.run_ref,
        run_image_id=images.run.id,
        method="no-cache" if no_cache else "cached",
        dry_run=dry_run,
        app_layers=len(images.app_layers),
        run_image_fetch=fetched.run,
        app_image_fetch=fetched.app,
        timings=clock.timings,
    )
    # pack's method (--no-cache) reads both images from the daemon into a throw-away store
    # and sends everything but the run image's layers, where the daemon's store allows.
    policy = pack_method(len(images.run.diff_ids)) if no_cache else REUSE
    lease = None if no_cache else lease
    with _pack_method_store() if no_cache else nullcontext(store) as source, ExitStack() as stack:
        app_config_digest, deferred = _cache_images(
            source, daemon, images, report, policy=policy, lease=lease, launch=launch
        )
        if deferred is not None:  # let go of the launch caches whatever happens
            stack.callback(deferred.finish, lease)
        clock.lap("save+import")
        if dry_run or app_config_digest is None:
            _plan_only(source, daemon, images, report)
            clock.lap("plan")
            return report
        new_config = rebased_config(
            source.image_config(app_config_digest),
            images.run,
            images.run_ref,
            images.metadata,
            images.app_layers,
            force,
        )
        clock.lap("config")
        loaded = _load_rebased(
            source, daemon, new_config, report, deferred, lease=lease, policy=policy
        )
        clock.lap("load")
    report.new_image_id = loaded.image_id
    report.layers_sent = loaded.layers_sent
    report.layers_reused = loaded.layers_reused
    report.bytes_sent = loaded.bytes_sent
    report.load_method = loaded.load_method
    report.manifest_size = loaded.manifest_size
    return report
